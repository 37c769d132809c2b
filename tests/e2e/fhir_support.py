"""Helpers of the FHIR tests: resources, the bulk export dance, a live uvicorn server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from healthdb_api.fhir.mapping import SSN_SYSTEM
from healthdb_api.fhir.settings import DEFAULT_MRN_SYSTEM

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
#: Bound on waiting for an export or a server (a hang guard, not a timing assertion).
PATIENCE = 120.0


def patient_body(**overrides: Any) -> dict[str, Any]:
    """A valid FHIR Patient with a fresh MRN and an SSN."""
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {"system": DEFAULT_MRN_SYSTEM, "value": f"MRN-{uuid.uuid4().hex[:10]}"},
            {"system": SSN_SYSTEM, "value": "900-12-3456"},
        ],
        "name": [{"use": "official", "family": "D'Ancona", "given": ["Zoë"]}],
        "gender": "female",
        "birthDate": "1980-02-29",
        "telecom": [
            {"system": "phone", "value": "+14155550123"},
            {"system": "email", "value": "zoe@example.org"},
        ],
        "address": [{"use": "home", "text": "12 St James's Square, London"}],
    }
    body.update(overrides)
    return body


def mrn_of(resource: dict[str, Any]) -> str:
    return next(str(i["value"]) for i in resource["identifier"] if i["system"] != SSN_SYSTEM)


def comparable(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource without what the server assigns (id, meta): equal ⇔ same patient data."""
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


async def export_all(
    client: httpx.AsyncClient, headers: dict[str, str], *, params: dict[str, str] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Kick off an export, poll it to completion, download every file: (manifest, resources)."""
    started = await client.get(
        "/fhir/Patient/$export", params=params, headers={**headers, "Prefer": "respond-async"}
    )
    assert started.status_code == 202, started.text
    manifest = await poll(client, started.headers["Content-Location"], headers)
    resources: list[dict[str, Any]] = []
    for output in manifest["output"]:
        got = await client.get(output["url"], headers=headers)
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "application/fhir+ndjson"
        lines = [json.loads(line) for line in got.text.splitlines()]
        assert len(lines) == output["count"]
        resources.extend(lines)
    return manifest, resources


async def poll(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """Poll a status URL until it stops answering 202; returns the manifest."""
    async with asyncio.timeout(PATIENCE):
        while True:
            status = await client.get(url, headers=headers)
            if status.status_code != 202:
                break
            assert "X-Progress" in status.headers
            await asyncio.sleep(0.05)
    assert status.status_code == 200, status.text
    manifest: dict[str, Any] = status.json()
    return manifest


@asynccontextmanager
async def live_server(app: FastAPI) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port (lifespan included): its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(PATIENCE):
            while not server.started:
                assert not task.done(), "uvicorn stopped during start-up"
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
