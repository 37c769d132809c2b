"""Injection-looking input over HTTP, on SQLite and PostgreSQL: stored and returned exactly,
the table survives, and a ``suspicious_input`` security event is logged -- without the
value -- naming the path, the field locations, the rules and the request id."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import inspect

from healthdb import DatabaseService
from tests.canary import LOGS
from tests.e2e.conftest import register, staff

BASE = "/api/v1/patients"
PAYLOAD = "Robert'); DROP TABLE patients;--"
IRISH = "O'Brien"


def security_events(since: int) -> list[dict[str, Any]]:
    """``suspicious_input`` events rendered (through redaction) since the mark ``since``."""
    lines = LOGS.text(since).splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in events if e.get("event") == "suspicious_input"]


def body(**fields: Any) -> dict[str, Any]:
    return {
        "mrn": f"MRN-{uuid.uuid4().hex[:10]}",
        "given_name": "Ada",
        "family_name": "Byron",
        "date_of_birth": "1990-12-10",
        "sex": "female",
        **fields,
    }


async def table_names(app: FastAPI) -> list[str]:
    db: DatabaseService = app.state.db
    async with db.engines.primary.connect() as conn:
        return await conn.run_sync(lambda sync: inspect(sync).get_table_names())


async def test_hostile_names_round_trip_exactly(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    created = await client.post(
        BASE, json=body(given_name=PAYLOAD, family_name=IRISH, notes=PAYLOAD), headers=doctor
    )
    assert created.status_code == 201, created.text
    patient = created.json()
    assert (patient["given_name"], patient["family_name"], patient["notes"]) == (
        PAYLOAD,
        IRISH,
        PAYLOAD,
    )
    url = f"{BASE}/{patient['id']}"
    fetched = (await client.get(url, headers=doctor)).json()
    assert (fetched["given_name"], fetched["family_name"]) == (PAYLOAD, IRISH)

    # Swapped by PATCH, and found again by search with the hostile text as the query.
    patched = await client.patch(
        url,
        json={"given_name": IRISH, "family_name": PAYLOAD},
        headers={**doctor, "If-Match": '"1"'},
    )
    assert patched.status_code == 200, patched.text
    for query in (PAYLOAD, IRISH, "O'B", "Robert');"):
        found = await client.get(BASE, params={"name": query}, headers=doctor)
        assert found.status_code == 200, found.text
        assert [(p["given_name"], p["family_name"]) for p in found.json()["items"]] == [
            (IRISH, PAYLOAD)
        ], query

    # The table is still there, still holding the row, and still takes writes.
    assert "patients" in await table_names(app)
    assert (await client.get(url, headers=doctor)).json()["family_name"] == PAYLOAD
    assert (await client.post(BASE, json=body(), headers=doctor)).status_code == 201


async def test_hostile_input_is_a_security_event_without_the_value(
    client: httpx.AsyncClient,
) -> None:
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    since = LOGS.mark()  # only the requests below

    created = await client.post(BASE, json=body(family_name=PAYLOAD), headers=doctor)
    assert created.status_code == 201, created.text
    searched = await client.get(BASE, params={"name": PAYLOAD}, headers=doctor)
    assert searched.status_code == 200

    events = security_events(since)
    assert len(events) == 2, events
    post, search = events
    assert post["level"] == "warning"
    assert post["security_event"] is True
    assert (post["method"], post["path"]) == ("POST", BASE)
    assert post["locations"] == ["body.family_name"]
    assert {"stacked_statement", "comment_tail"} <= set(post["rules"])
    assert post["request_id"] == created.headers["X-Request-ID"]
    assert (search["method"], search["locations"]) == ("GET", ["query.name"])
    assert search["request_id"] == searched.headers["X-Request-ID"]
    # Neither the value nor any recognisable part of it is in the log.
    text = LOGS.text(since)
    for fragment in (PAYLOAD, "DROP TABLE", "Robert"):
        assert fragment not in text


async def test_ordinary_apostrophes_raise_no_security_event(client: httpx.AsyncClient) -> None:
    admin = await register(client)
    _, doctor = await staff(client, admin, "doctor")
    since = LOGS.mark()
    created = await client.post(
        BASE, json=body(family_name=IRISH, address="12 St John's Rd"), headers=doctor
    )
    assert created.status_code == 201, created.text
    assert (await client.get(BASE, params={"name": IRISH}, headers=doctor)).status_code == 200
    assert security_events(since) == []
