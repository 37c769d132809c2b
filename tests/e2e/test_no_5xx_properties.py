"""No input answers 5xx: hypothesis feeds every operation of the OpenAPI schema arbitrary
JSON through the real app, on SQLite and PostgreSQL (the ``client`` fixture).

The requests are derived from the schema itself, so a route added later is covered without
touching this file. Each field gets either a plausible value of its declared type (ids of
the world's rows, boundary dates and times, enum members, text in any script), so that
requests reach the database, or a hostile one: unpaired surrogates, NUL and other control
characters, bidirectional overrides, timestamps whose UTC value leaves years 1-9999, odd
offsets, huge and non-finite numbers, wrong types, unknown keys. The mode ``one_bad``
makes every field plausible but one: the request that passes everything else and breaks
on the way to the database (how a lone surrogate in a name answered 500). Whole bodies are
sometimes arbitrary JSON, nested tens of thousands deep, or not JSON at all; requests go
out with the admin's token, a doctor's, a forged one or none. Every answer must be below
500, and nothing may be logged at error level meanwhile. Shown to find, each on its own:
the surrogate rule removed, the UTC range of instants removed (both layers), the JSON
depth bound removed.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from healthdb_api.app import create_app
from healthdb_api.settings import ApiSettings
from tests.canary import LOGS
from tests.e2e.conftest import PASSWORD, Account, register, staff

EXAMPLES = 300
REQUESTS_PER_EXAMPLE = 3

#: Values that broke or could break a conversion on the way to the database.
HOSTILE_STRINGS = [
    "\ud800",
    "a\udfffb",
    "\x00",
    "nul\x00inside",
    "\x1b[31mred",
    "\u202eevil",
    "\u2066isolate\u2069",
    "\u200b",
    "\ufeff",
    "\U000e0041",
    "x" * 600,
    "9999-12-31T23:00:00-05:00",
    "0001-01-01T01:00:00+05:00",
    "2030-01-01T00:00:00+23:59",
    "2030-01-01T00:00:00-23:59",
    "0000-01-01",
    "9999-12-31",
    "-1",
    "1e400",
    "NaN",
    "Robert'); DROP TABLE patients;--",
    "%",
    "_",
    "*",
    'W/"1"',
    "",
    " ",
]
HUGE_NUMBERS = [2**31, 2**63, 10**30, -(10**30), 1e308, -1e308, 0, -1, 1.5]
ODD_INSTANTS = [
    "2031-03-03T09:00:00Z",  # a few ordinary, nearby times: start and end may pair up
    "2031-03-03T09:30:00+00:00",
    "2031-03-03T15:00:00+05:00",
    "9999-12-31T23:59:59+00:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:00:00-05:00",
    "0001-01-01T01:00:00+05:00",
    "2030-06-01T12:00:00+14:00",
    "2030-06-01T12:00:00-12:00",
    "2030-06-01T12:00:00.123456789Z",
    "2030-06-01T12:00:00",  # no offset
]
ODD_DATES = ["0001-01-01", "9999-12-31", "1900-02-29", "2024-02-29", "2999-01-01"]

text_any = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates too
HOSTILE: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    text_any,
    st.sampled_from(HUGE_NUMBERS),
    st.booleans(),
    st.none(),
    st.just([]),
    st.just({"$gt": ""}),
)
ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text_any,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text_any, inner, max_size=4),
    max_leaves=20,
)


class World:
    """Ids the plausible values are drawn from, and who may call."""

    def __init__(self, admin: Account, doctor: dict[str, str], ids: dict[str, list[str]]):
        self.admin = admin
        self.doctor = doctor
        self.ids = ids

    def known(self, index: int) -> str:
        """One of the world's ids (those created by earlier requests too)."""
        every = [i for ids in self.ids.values() for i in ids]
        return every[index % len(every)]


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        resolved: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
        return resolved
    return schema


#: Text every backend stores: any letter, mark, number, symbol or space of any script
#: (combining accents, right-to-left letters, emoji), none of what the text rule refuses.
STORABLE = st.characters(exclude_categories=("Cs", "Cc", "Cf", "Zl", "Zp"))
#: How a request's fields are drawn: all plausible (so it reaches the database), all but
#: one (the one that must not break the way there), all hostile, or each either way.
MODES = ("plausible", "one_bad", "one_bad", "hostile", "mixed")


def plausible(name: str, schema: dict[str, Any], spec: dict[str, Any], w: World) -> Any:
    """A strategy for a value of ``schema``'s type, within or at its bounds."""
    schema = _resolve(schema, spec)
    if "anyOf" in schema:
        return st.one_of(*(plausible(name, s, spec, w) for s in schema["anyOf"]))
    kind, fmt = schema.get("type"), schema.get("format")
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = schema.get("minimum", -5), schema.get("maximum", 10**6)
        return st.integers(int(low), int(high)) | st.sampled_from([int(low), int(high)])
    if fmt == "uuid" or name.endswith("_id"):
        # An index, resolved when drawn: the rows grow as requests create them, and the
        # shape of the draw must not change with them.
        return st.integers(0, 2**16).map(w.known) | st.uuids().map(str)
    if fmt == "date-time" or name in ("start", "end", "from", "to", "start_at", "end_at"):
        return st.sampled_from(ODD_INSTANTS) | st.datetimes(timezones=st.timezones()).map(
            lambda d: d.isoformat()
        )
    if fmt == "date" or name == "date_of_birth":
        return st.sampled_from(ODD_DATES) | st.dates().map(str)
    if fmt == "email" or name == "email":
        return st.emails().map(str.lower) | st.just(w.admin.email)
    if "password" in name:
        return st.sampled_from([PASSWORD, "wrong horse battery staple 41", "short"])
    if kind == "object":
        return ANY_JSON
    if name == "phone":
        return st.sampled_from(["+12125550123", "+442071838750", "+1", "12345"])
    limit = int(schema.get("maxLength", 200))
    return st.text(STORABLE, min_size=int(schema.get("minLength", 0)), max_size=limit)


def field(name: str, schema: dict[str, Any], spec: dict[str, Any], w: World, mode: str) -> Any:
    if mode == "plausible":
        return plausible(name, schema, spec, w)
    if mode == "hostile":
        return HOSTILE
    return st.one_of(plausible(name, schema, spec, w), HOSTILE)


def fields(
    properties: dict[str, Any],
    required: list[str],
    spec: dict[str, Any],
    w: World,
    mode: str,
    *,
    always: bool = False,
) -> Any:
    """A dict of the given fields: the required ones always unless hostile (or ``always``).
    In ``one_bad`` mode every field is plausible but one, which is hostile: the request that
    passes everything else and breaks on the way to the database."""
    if mode == "one_bad" and properties:
        return st.sampled_from(sorted(properties)).flatmap(
            lambda bad: _fields(properties, required, spec, w, "plausible", bad)
        )
    mode = "plausible" if mode == "one_bad" else mode
    return _fields(properties, required if mode == "plausible" or always else [], spec, w, mode)


def _fields(
    properties: dict[str, Any],
    required: list[str],
    spec: dict[str, Any],
    w: World,
    mode: str,
    bad: str | None = None,
) -> Any:
    strategies = {
        name: HOSTILE if name == bad else field(name, sub, spec, w, mode)
        for name, sub in properties.items()
    }
    present = {*required, *([bad] if bad else [])}
    return st.fixed_dictionaries(
        {k: v for k, v in strategies.items() if k in present},
        optional={k: v for k, v in strategies.items() if k not in present},
    )


def body(schema: dict[str, Any] | None, spec: dict[str, Any], w: World, mode: str) -> Any:
    """A strategy of ``(content bytes or None)`` for a request body of ``schema``."""
    if schema is None:
        return st.none()
    model = _resolve(schema, spec)
    properties: dict[str, Any] = model.get("properties", {})
    shaped = ANY_JSON
    if properties:
        shaped = fields(properties, model.get("required", []), spec, w, mode)
    if mode in ("plausible", "one_bad"):
        return shaped.map(lambda v: json.dumps(v).encode())
    extra = st.dictionaries(text_any, HOSTILE, max_size=2)
    shaped = st.tuples(shaped, extra).map(
        lambda pair: {**pair[1], **pair[0]} if isinstance(pair[0], dict) else pair[0]
    )
    deep = st.integers(20, 60_000).map(lambda n: b"[" * n + b"]" * n)
    return st.one_of(
        shaped.map(lambda v: json.dumps(v).encode()),  # surrogates escaped, as clients send
        st.just(b'{"version": NaN, "limit": Infinity}'),
        ANY_JSON.map(lambda v: json.dumps(v).encode()),
        deep,
        st.just(b"\xff\xfe not json"),
    )


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every operation; those that take input four times over, so they are drawn more."""
    found = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            takes_input = bool(op.get("parameters") or op.get("requestBody"))
            found.extend([(method.upper(), path, op)] * (4 if takes_input else 1))
    return found


def request(
    method: str, path: str, op: dict[str, Any], spec: dict[str, Any], w: World, mode: str
) -> Any:
    """A strategy of ``(method, url, headers, content)`` for one operation."""
    params = op.get("parameters", [])
    in_path = {p["name"]: p.get("schema", {}) for p in params if p["in"] == "path"}
    in_query = {p["name"]: p.get("schema", {}) for p in params if p["in"] == "query"}
    required = [p["name"] for p in params if p.get("required")]
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    who = st.sampled_from(["admin", "admin", "doctor", "none", "forged"])
    if_match = st.one_of(st.none(), st.sampled_from(['"1"', "1", "*", 'W/"1"', str(2**70), "x"]))

    def build(parts: tuple[dict[str, Any], dict[str, Any], str, str | None, bytes | None]) -> Any:
        segments, args, caller, tag, content = parts
        url = re.sub(r"\{(\w+)\}", lambda m: _encoded(segments[m.group(1)]), path)
        if args:
            url += "?" + "&".join(f"{_encoded(k)}={_encoded(v)}" for k, v in args.items())
        headers = {"content-type": "application/json"} if content is not None else {}
        headers.update(_auth(w, caller))
        if tag is not None:
            headers["if-match"] = tag
        return method, url, headers, content

    return st.tuples(
        fields(in_path, list(in_path), spec, w, mode, always=True),
        fields(in_query, required, spec, w, mode),
        who,
        if_match,
        body(schema, spec, w, mode),
    ).map(build)


def _encoded(value: Any) -> str:
    """``value`` percent-encoded as a client would put it in a URL; a lone surrogate goes
    out as the invalid UTF-8 bytes a broken UTF-16 client produces (``%ED%A0%80``)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _auth(w: World, caller: str) -> dict[str, str]:
    if caller == "admin":
        return w.admin.headers
    if caller == "doctor":
        return w.doctor
    if caller == "forged":
        return {"Authorization": "Bearer " + w.admin.access_token[:-4] + "AAAA"}
    return {}


@pytest.fixture
def app(api_settings: ApiSettings) -> FastAPI:
    """Budgets far above what these requests need: a 429 is fine here, but would starve
    the later requests of an example of any chance to reach the database."""
    roomy = {
        "rate_limit_per_minute": 10_000_000,
        "rate_limit_burst": 10_000_000,
        "login_max_failures_per_account": 100_000,
        "login_max_failures_per_address": 1_000_000,
    }
    return create_app(api_settings.model_copy(update=roomy))


WORLDS: dict[str, tuple[httpx.AsyncClient, World]] = {}


async def _world(client: httpx.AsyncClient, backend: str) -> World:
    built = WORLDS.get(backend)
    if built is not None and built[0] is client:
        return built[1]
    admin = await register(client)
    doctor, doctor_headers = await staff(client, admin, "doctor")
    patient = await client.post(
        "/api/v1/patients",
        json={
            "mrn": f"P-{uuid.uuid4().hex[:8]}",
            "given_name": "Ada",
            "family_name": "Byron",
            "date_of_birth": "1990-12-10",
            "sex": "female",
        },
        headers=admin.headers,
    )
    assert patient.status_code == 201, patient.text
    appointment = await client.post(
        "/api/v1/appointments",
        json={
            "patient_id": patient.json()["id"],
            "clinician_id": doctor["id"],
            "start_at": "2031-01-06T09:00:00Z",
            "end_at": "2031-01-06T09:30:00Z",
        },
        headers=admin.headers,
    )
    assert appointment.status_code == 201, appointment.text
    ids = {  # not the admin's own id: a request demoting it would starve every later one
        "user": [doctor["id"]],
        "patient": [patient.json()["id"]],
        "appointment": [appointment.json()["id"]],
        "clinic": [admin.clinic["id"]],
    }
    world = World(admin, doctor_headers, ids)
    WORLDS[backend] = (client, world)
    return world


SPEC = create_app(ApiSettings(jwt_secret=SecretStr("s" * 40))).openapi()
OPERATIONS = operations(SPEC)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_no_request_answers_5xx(
    client: httpx.AsyncClient, migrated_url: str, data: st.DataObject
) -> None:
    backend = "postgres" if migrated_url.startswith("postgresql") else "sqlite"
    w = await _world(client, backend)
    since = LOGS.mark()
    for _ in range(REQUESTS_PER_EXAMPLE):
        method, path, op = data.draw(st.sampled_from(OPERATIONS), label="operation")
        mode = data.draw(st.sampled_from(MODES), label="mode")
        method, url, headers, content = data.draw(
            request(method, path, op, SPEC, w, mode), label="request"
        )
        response = await client.request(method, url, headers=headers, content=content)
        if response.status_code == 201 and "id" in response.json():
            w.ids.setdefault("created", []).append(response.json()["id"])
        assert response.status_code < 500, (
            f"{method} {url} -> {response.status_code}: {response.text}"
        )
    errors = [
        line
        for line in LOGS.text(since).splitlines()
        if '"level": "error"' in line or "Traceback" in line
    ]
    assert errors == []


def test_every_operation_of_the_schema_is_exercised() -> None:
    """The strategies above are built from the schema: every route with a body or
    parameters gets its fields, so none is left out by hand."""
    assert len(OPERATIONS) >= 27
    assert {path for _, path, _ in OPERATIONS} >= {
        "/api/v1/patients",
        "/api/v1/appointments",
        "/api/v1/admin/audit",
        "/api/v1/auth/register",
        "/api/v1/users/{user_id}",
    }
