"""Property-based proof of tenancy over HTTP, on SQLite and PostgreSQL (the ``client`` fixture).

Two registered clinics, each with staff, patients and appointments. Hypothesis picks requests
aimed at the *other* clinic's rows; every one must answer exactly (status and body bytes) like
the same request with a random uuid, and no list ever shows a foreign item. Latencies of
foreign-id and random-id GETs are compared as a sanity check (no existence timing oracle).
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
import time
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from healthdb_api.app import create_app
from healthdb_api.settings import ApiSettings
from tests.e2e.conftest import Account, register, staff
from tests.e2e.test_appointments import at

PATIENTS = "/api/v1/patients"
APPOINTMENTS = "/api/v1/appointments"
USERS = "/api/v1/users"
ATTEMPTS_PER_EXAMPLE = 25
EXAMPLES = 82
TARGET_PER_BACKEND = 2000  # 4,000+ across both backends
MIN_TIMING_SAMPLES = 200

ATTEMPTS: collections.Counter[str] = collections.Counter()


@dataclasses.dataclass
class Side:
    admin: Account
    doctor: dict[str, Any]
    patients: list[dict[str, Any]]
    appointments: list[dict[str, Any]]


@dataclasses.dataclass
class HttpWorld:
    backend: str
    sides: list[Side]
    latency: dict[str, list[float]]


#: backend -> (the client it was built through, the world); rebuilt for a new client
WORLDS: dict[str, tuple[httpx.AsyncClient, HttpWorld]] = {}


@pytest.fixture
def app(api_settings: ApiSettings) -> FastAPI:
    """The service with a clinic budget far above what these thousands of requests need
    (rate limiting is proven in test_rate_limit.py; here a 429 would mask the comparison)."""
    roomy = {"rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000}
    return create_app(api_settings.model_copy(update=roomy))


async def build(client: httpx.AsyncClient, backend: str) -> HttpWorld:
    token = uuid.uuid4().hex[:8]
    sides: list[Side] = []
    for c in range(2):
        admin = await register(client)
        doctor, _ = await staff(client, admin, "doctor")
        patients = []
        for j in range(3):
            body = {
                "mrn": f"H-{token}-{j}" if j == 0 else f"H-{token}-{c}-{j}",
                "given_name": f"Hgiv{token}c{c}p{j}",
                "family_name": f"Hfam{token}shared" if j == 0 else f"Hfam{token}c{c}p{j}",
                "date_of_birth": "1971-05-06" if j == 0 else f"198{c}-0{j}-1{j}",
                "sex": "female",
            }
            r = await client.post(PATIENTS, json=body, headers=admin.headers)
            assert r.status_code == 201, r.text
            patients.append(r.json())
        appointments = []
        for k, patient in enumerate(patients):
            body = {
                "patient_id": patient["id"],
                "clinician_id": doctor["id"],
                "start_at": at(60 * k),
                "end_at": at(60 * k + 30),
                "reason": "check",
            }
            r = await client.post(APPOINTMENTS, json=body, headers=admin.headers)
            assert r.status_code == 201, r.text
            appointments.append(r.json())
        sides.append(Side(admin, doctor, patients, appointments))
    return HttpWorld(backend, sides, {"foreign": [], "random": []})


def request_for(op: str, w: HttpWorld, me: Side, them: Side, pick: int, target_id: str) -> Any:
    """(method, url, kwargs) for ``op`` aimed at ``target_id``."""
    h = me.admin.headers
    if op == "get_patient":
        return "GET", f"{PATIENTS}/{target_id}", {"headers": h}
    if op == "patch_patient":
        return (
            "PATCH",
            f"{PATIENTS}/{target_id}",
            {"headers": {**h, "If-Match": '"1"'}, "json": {"given_name": "Pwned"}},
        )
    if op == "delete_patient":
        return "DELETE", f"{PATIENTS}/{target_id}", {"headers": h}
    if op == "get_appointment":
        return "GET", f"{APPOINTMENTS}/{target_id}", {"headers": h}
    if op == "cancel_appointment":
        return "POST", f"{APPOINTMENTS}/{target_id}/cancel", {"headers": h}
    if op == "get_user":
        return "GET", f"{USERS}/{target_id}", {"headers": h}
    if op == "patch_user":
        return "PATCH", f"{USERS}/{target_id}", {"headers": h, "json": {"active": False}}
    if op == "book_foreign_patient":
        body = {
            "patient_id": target_id,
            "clinician_id": me.doctor["id"],
            "start_at": at(10_000),
            "end_at": at(10_030),
        }
        return "POST", APPOINTMENTS, {"headers": h, "json": body}
    if op == "book_foreign_clinician":
        body = {
            "patient_id": me.patients[0]["id"],
            "clinician_id": target_id,
            "start_at": at(10_000),
            "end_at": at(10_030),
        }
        return "POST", APPOINTMENTS, {"headers": h, "json": body}
    if op == "list_by_patient":
        return "GET", APPOINTMENTS, {"headers": h, "params": {"patient_id": target_id}}
    if op == "list_by_clinician":
        return "GET", APPOINTMENTS, {"headers": h, "params": {"clinician_id": target_id}}
    raise AssertionError(op)


#: op -> which of the other clinic's ids it targets
BY_ID = {
    "get_patient": "patient",
    "patch_patient": "patient",
    "delete_patient": "patient",
    "get_appointment": "appointment",
    "cancel_appointment": "appointment",
    "get_user": "user",
    "patch_user": "user",
    "book_foreign_patient": "patient",
    "book_foreign_clinician": "user",
    "list_by_patient": "patient",
    "list_by_clinician": "user",
}
SEARCHES = ("search_name", "search_mrn", "search_dob", "search_given_prefix", "list_all")
OPERATIONS = [*BY_ID, *SEARCHES]


def foreign_id(them: Side, kind: str, pick: int) -> str:
    if kind == "patient":
        return str(them.patients[pick % len(them.patients)]["id"])
    if kind == "appointment":
        return str(them.appointments[pick % len(them.appointments)]["id"])
    return str(them.admin.user["id"] if pick % 2 else them.doctor["id"])


async def attempt(
    client: httpx.AsyncClient, w: HttpWorld, me: Side, them: Side, op: str, pick: int
) -> None:
    ATTEMPTS[w.backend] += 1
    ctx = f"{w.backend} op={op}"
    if op in BY_ID:
        target = foreign_id(them, BY_ID[op], pick)
        method, url, kw = request_for(op, w, me, them, pick, target)
        started = time.perf_counter()
        got = await client.request(method, url, **kw)
        foreign_s = time.perf_counter() - started
        rmethod, rurl, rkw = request_for(op, w, me, them, pick, str(uuid.uuid4()))
        started = time.perf_counter()
        baseline = await client.request(rmethod, rurl, **rkw)
        random_s = time.perf_counter() - started
        if op in ("get_patient", "get_appointment", "get_user"):
            w.latency["foreign"].append(foreign_s)
            w.latency["random"].append(random_s)
        assert got.status_code == baseline.status_code, f"{ctx}: {got.text} vs {baseline.text}"
        assert got.content == baseline.content, f"{ctx}: {got.text!r} != {baseline.text!r}"
        assert got.status_code in (200, 404, 422), f"{ctx}: {got.status_code} {got.text}"
        if got.status_code == 200:
            assert got.json()["items"] == [], ctx
        return
    victim = them.patients[pick % len(them.patients)]
    params: dict[str, str] = {
        "search_name": {"name": victim["family_name"]},
        "search_mrn": {"mrn": victim["mrn"]},
        "search_dob": {"date_of_birth": victim["date_of_birth"]},
        "search_given_prefix": {"name": victim["given_name"][:-2]},
        "list_all": {"limit": "200"},
    }[op]
    r = await client.get(PATIENTS, params=params, headers=me.admin.headers)
    assert r.status_code == 200, f"{ctx}: {r.text}"
    got_ids = {item["id"] for item in r.json()["items"]}
    theirs = {p["id"] for p in them.patients}
    assert not got_ids & theirs, f"LEAK {ctx}: foreign patient listed"
    assert got_ids <= {p["id"] for p in me.patients}, f"LEAK {ctx}: unknown patient listed"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batch=st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from(OPERATIONS), st.integers(0, 1000)),
        min_size=ATTEMPTS_PER_EXAMPLE,
        max_size=ATTEMPTS_PER_EXAMPLE,
    )
)
async def test_foreign_ids_answer_like_random_ones(
    client: httpx.AsyncClient, migrated_url: str, batch: list[tuple[int, str, int]]
) -> None:
    backend = "postgres" if migrated_url.startswith("postgresql") else "sqlite"
    built = WORLDS.get(backend)
    if built is None or built[0] is not client:  # once per client (per backend)
        built = WORLDS[backend] = (client, await build(client, backend))
    w = built[1]
    for side, op, pick in batch:
        await attempt(client, w, w.sides[side], w.sides[1 - side], op, pick)
    # The owners still see their rows unchanged.
    for side in w.sides:
        for patient in side.patients:
            r = await client.get(f"{PATIENTS}/{patient['id']}", headers=side.admin.headers)
            assert r.status_code == 200, r.text
            assert r.json() == patient, r.text
        for appt in side.appointments:
            r = await client.get(f"{APPOINTMENTS}/{appt['id']}", headers=side.admin.headers)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "booked", r.text
        r = await client.get(f"{USERS}/{side.doctor['id']}", headers=side.admin.headers)
        assert r.status_code == 200, r.text
        assert r.json()["active"] is True, r.text
    if ATTEMPTS[backend] >= EXAMPLES * ATTEMPTS_PER_EXAMPLE:
        finish(w)


def finish(w: HttpWorld) -> None:
    made = ATTEMPTS[w.backend]
    foreign, rand = w.latency["foreign"], w.latency["random"]
    fm, rm = statistics.median(foreign), statistics.median(rand)
    print(
        f"\n[isolation proof] {w.backend}: {made} HTTP attempts; median GET latency "
        f"foreign {fm * 1000:.2f} ms vs random {rm * 1000:.2f} ms over {len(foreign)} samples"
    )
    assert made >= TARGET_PER_BACKEND, f"{w.backend}: only {made} HTTP attempts"
    assert min(len(foreign), len(rand)) >= MIN_TIMING_SAMPLES
    assert 0.5 <= fm / rm <= 2.0, f"{w.backend}: foreign/random latency ratio {fm / rm:.2f}"
