"""Appointments over HTTP: booking, no double booking under concurrency, listing, cancel."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Account, register, staff
from tests.e2e.test_patients import create, error_locs

BASE = "/api/v1/appointments"
T0 = dt.datetime(2031, 3, 4, 9, 0, tzinfo=dt.UTC)


def at(minutes: int) -> str:
    return (T0 + dt.timedelta(minutes=minutes)).isoformat()


class Clinic:
    """A clinic with an admin, a doctor, a receptionist and one patient."""

    def __init__(
        self,
        admin: Account,
        doctor: dict[str, Any],
        doctor_headers: dict[str, str],
        desk: dict[str, str],
        patient: dict[str, Any],
    ) -> None:
        self.admin = admin
        self.doctor = doctor
        self.doctor_headers = doctor_headers
        self.desk = desk
        self.patient = patient

    def booking(self, start: int, end: int, **fields: Any) -> dict[str, Any]:
        body = {
            "patient_id": self.patient["id"],
            "clinician_id": self.doctor["id"],
            "start_at": at(start),
            "end_at": at(end),
            "reason": "follow-up",
        }
        body.update(fields)
        return body


async def make_clinic(client: httpx.AsyncClient) -> Clinic:
    admin = await register(client)
    doctor, doctor_headers = await staff(client, admin, "doctor")
    _, desk = await staff(client, admin, "receptionist")
    patient = await create(client, admin.headers)
    return Clinic(admin, doctor, doctor_headers, desk, patient)


async def book(client: httpx.AsyncClient, clinic: Clinic, start: int, end: int) -> Any:
    response = await client.post(BASE, json=clinic.booking(start, end), headers=clinic.desk)
    assert response.status_code == 201, response.text
    return response.json()


async def walk(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(BASE, params=query, headers=headers)
        assert response.status_code == 200, response.text
        items.extend(response.json()["items"])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not terminate")


async def test_book_get_and_cancel(client: httpx.AsyncClient) -> None:
    clinic = await make_clinic(client)
    created = await client.post(BASE, json=clinic.booking(0, 30), headers=clinic.desk)
    assert created.status_code == 201, created.text
    appt = created.json()
    assert appt["status"] == "booked"
    assert appt["version"] == 1
    assert created.headers["etag"] == '"1"'
    assert dt.datetime.fromisoformat(appt["start_at"]) == T0
    assert appt["patient_id"] == clinic.patient["id"]
    assert appt["clinician_id"] == clinic.doctor["id"]
    assert appt["reason"] == "follow-up"

    fetched = await client.get(f"{BASE}/{appt['id']}", headers=clinic.doctor_headers)
    assert fetched.json() == appt

    stale = await client.post(
        f"{BASE}/{appt['id']}/cancel", headers={**clinic.desk, "If-Match": '"9"'}
    )
    assert stale.status_code == 409
    cancelled = await client.post(
        f"{BASE}/{appt['id']}/cancel", headers={**clinic.desk, "If-Match": '"1"'}
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["version"] == 2
    assert cancelled.headers["etag"] == '"2"'
    again = await client.post(f"{BASE}/{appt['id']}/cancel", headers=clinic.desk)
    assert again.status_code == 200
    assert again.json()["version"] == 2

    # A cancelled appointment frees the slot.
    await book(client, clinic, 0, 30)


async def test_overlap_is_409_and_adjacent_is_fine(client: httpx.AsyncClient) -> None:
    clinic = await make_clinic(client)
    await book(client, clinic, 60, 120)
    for start, end in ((60, 120), (30, 61), (119, 180), (70, 80), (0, 240)):
        response = await client.post(BASE, json=clinic.booking(start, end), headers=clinic.desk)
        assert response.status_code == 409, (start, end)
        assert response.json()["error"]["code"] == "slot_taken"
    await book(client, clinic, 0, 60)
    await book(client, clinic, 120, 150)
    # Another clinician is free at the same time.
    nurse, _ = await staff(client, clinic.admin, "nurse")
    response = await client.post(
        BASE, json=clinic.booking(60, 120, clinician_id=nurse["id"]), headers=clinic.desk
    )
    assert response.status_code == 201, response.text


async def test_concurrent_bookings_of_one_slot_yield_exactly_one(
    client: httpx.AsyncClient,
) -> None:
    clinic = await make_clinic(client)
    patients = [await create(client, clinic.admin.headers) for _ in range(20)]

    async def attempt(patient: dict[str, Any]) -> httpx.Response:
        body = clinic.booking(0, 30, patient_id=patient["id"])
        return await client.post(BASE, json=body, headers=clinic.desk)

    responses = await asyncio.gather(*(attempt(p) for p in patients))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19, [r.text for r in responses if r.status_code != 409]
    assert all(r.json()["error"]["code"] == "slot_taken" for r in responses if r.status_code == 409)
    booked = await walk(
        client, clinic.desk, clinician_id=clinic.doctor["id"], start=at(0), end=at(30)
    )
    assert len(booked) == 1


async def test_list_by_patient_clinician_and_window(client: httpx.AsyncClient) -> None:
    clinic = await make_clinic(client)
    other_patient = await create(client, clinic.admin.headers)
    mine = [await book(client, clinic, 60 * i, 60 * i + 30) for i in range(5)]
    theirs = await client.post(
        BASE,
        json=clinic.booking(45, 55, patient_id=other_patient["id"]),
        headers=clinic.desk,
    )
    assert theirs.status_code == 201

    by_patient = await walk(client, clinic.desk, patient_id=clinic.patient["id"], limit=2)
    assert [a["id"] for a in by_patient] == [a["id"] for a in mine]
    by_doctor = await walk(client, clinic.desk, clinician_id=clinic.doctor["id"], limit=2)
    assert len(by_doctor) == 6
    starts = [a["start_at"] for a in by_doctor]
    assert starts == sorted(starts)
    # Intersecting the window [00:20, 02:00): the 00:00-00:30 one runs into it.
    window = await walk(
        client,
        clinic.desk,
        clinician_id=clinic.doctor["id"],
        start=at(20),
        end=at(120),
    )
    assert [a["id"] for a in window] == [mine[0]["id"], theirs.json()["id"], mine[1]["id"]]
    # Offsets other than UTC are understood.
    plus2 = (T0 + dt.timedelta(minutes=20)).astimezone(dt.timezone(dt.timedelta(hours=2)))
    same = await walk(
        client, clinic.desk, clinician_id=clinic.doctor["id"], start=plus2.isoformat(), end=at(120)
    )
    assert [a["id"] for a in same] == [a["id"] for a in window]


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"start_at": "2031-03-04T09:00:00"}, ["body", "start_at"]),
        ({"end_at": "2031-03-04T09:30:00"}, ["body", "end_at"]),
        ({"end_at": at(0)}, ["body"]),
        ({"end_at": at(-30)}, ["body"]),
        ({"end_at": at(12 * 60 + 1)}, ["body"]),
        ({"patient_id": "not-a-uuid"}, ["body", "patient_id"]),
        ({"reason": "r" * 501}, ["body", "reason"]),
        ({"status": "cancelled"}, ["body", "status"]),
    ],
)
async def test_invalid_bookings_are_422(
    client: httpx.AsyncClient, fields: dict[str, Any], loc: list[Any]
) -> None:
    clinic = await make_clinic(client)
    response = await client.post(BASE, json=clinic.booking(0, 30, **fields), headers=clinic.desk)
    assert loc in error_locs(response)


async def test_twelve_hours_is_the_longest_booking(client: httpx.AsyncClient) -> None:
    clinic = await make_clinic(client)
    await book(client, clinic, 0, 12 * 60)


async def test_naive_or_inverted_query_window_is_422(client: httpx.AsyncClient) -> None:
    clinic = await make_clinic(client)
    naive = await client.get(
        BASE,
        params={"clinician_id": clinic.doctor["id"], "start": "2031-03-04T09:00:00"},
        headers=clinic.desk,
    )
    assert ["query", "start"] in error_locs(naive)
    inverted = await client.get(BASE, params={"start": at(60), "end": at(0)}, headers=clinic.desk)
    assert inverted.status_code == 422
    bad_id = await client.get(BASE, params={"patient_id": "1 OR 1=1"}, headers=clinic.desk)
    assert ["query", "patient_id"] in error_locs(bad_id)


async def test_clinician_must_be_active_doctor_or_nurse_of_the_clinic(
    client: httpx.AsyncClient,
) -> None:
    clinic = await make_clinic(client)
    stranger = await make_clinic(client)
    receptionist, _ = await staff(client, clinic.admin, "receptionist")
    for clinician_id in (
        receptionist["id"],
        clinic.admin.user["id"],
        stranger.doctor["id"],
        str(uuid.uuid4()),
    ):
        response = await client.post(
            BASE, json=clinic.booking(0, 30, clinician_id=clinician_id), headers=clinic.desk
        )
        assert response.status_code == 422, clinician_id
        assert response.json()["error"]["code"] == "invalid_clinician"
        assert response.json()["error"]["details"][0]["loc"] == ["body", "clinician_id"]


async def test_patient_of_another_clinic_is_unknown(client: httpx.AsyncClient) -> None:
    clinic = await make_clinic(client)
    stranger = await make_clinic(client)
    foreign = await client.post(
        BASE,
        json=clinic.booking(0, 30, patient_id=stranger.patient["id"]),
        headers=clinic.desk,
    )
    missing = await client.post(
        BASE, json=clinic.booking(0, 30, patient_id=str(uuid.uuid4())), headers=clinic.desk
    )
    assert foreign.status_code == missing.status_code == 422
    assert foreign.content == missing.content
    assert foreign.json()["error"]["code"] == "unknown_patient"


async def test_other_clinics_appointments_are_404(client: httpx.AsyncClient) -> None:
    clinic = await make_clinic(client)
    stranger = await make_clinic(client)
    appt = await book(client, clinic, 0, 30)
    for path in (f"{BASE}/{appt['id']}", f"{BASE}/{uuid.uuid4()}"):
        assert (await client.get(path, headers=stranger.desk)).status_code == 404
    foreign = await client.post(f"{BASE}/{appt['id']}/cancel", headers=stranger.desk)
    missing = await client.post(f"{BASE}/{uuid.uuid4()}/cancel", headers=stranger.desk)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content
    assert await walk(client, stranger.desk, patient_id=clinic.patient["id"]) == []
    still = await client.get(f"{BASE}/{appt['id']}", headers=clinic.desk)
    assert still.json()["status"] == "booked"
    malformed = await client.post(f"{BASE}/nope/cancel", headers=clinic.desk)
    assert ["path", "appointment_id"] in error_locs(malformed)
