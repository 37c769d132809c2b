"""The access log: one line per request, route templates (never paths with ids, never query
strings), the request id on the response, batched writes."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from healthdb_api.access import ACCESS_LOGGER, AccessLog, clinic_of, configure_access_log

CLINIC = uuid.uuid4()


async def patient(request: Request) -> Response:
    clinic_of(request.scope, CLINIC)
    return JSONResponse({"ok": True})


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


def app() -> AccessLog:
    routes = [Route("/patients/{patient_id}", patient), Route("/boom", boom)]
    return AccessLog(Starlette(routes=routes))


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(ACCESS_LOGGER)
    saved = (list(logger.handlers), logger.propagate, logger.level)
    configure_access_log(json_lines=True, stream=stream)
    logger.setLevel(logging.INFO)
    yield stream
    for handler in logger.handlers:
        handler.close()
    logger.handlers[:], logger.propagate, logger.level = saved


def read(stream: io.StringIO) -> list[dict[str, object]]:
    logging.getLogger(ACCESS_LOGGER).handlers[0].flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_one_line_per_request_with_the_route_template(lines: io.StringIO) -> None:
    secret_id = "123-45-6789"
    transport = httpx.ASGITransport(app=app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.get(f"/patients/{secret_id}?name=Zephyrson")
        missing = await client.get(f"/nowhere/{secret_id}")
        failed = await client.get("/boom")
    records = read(lines)
    assert [r["status"] for r in records] == [200, 404, 500]
    assert records[0]["route"] == "/patients/{patient_id}"
    assert records[0]["clinic_id"] == str(CLINIC)
    assert records[1]["route"] == "(unmatched)"
    assert records[0]["request_id"] == ok.headers["x-request-id"]
    assert missing.headers["x-request-id"] != ok.headers["x-request-id"]
    assert failed.status_code == 500
    text = lines.getvalue()
    assert secret_id not in text
    assert "Zephyrson" not in text
    assert set(records[0]) == {
        "event", "level", "logger", "timestamp", "method", "route", "status",
        "duration_ms", "request_id", "clinic_id",
    }  # fmt: skip


async def test_lines_are_written_in_batches_not_one_write_each(lines: io.StringIO) -> None:
    writes: list[str] = []
    original = lines.write

    def counting(text: str) -> int:
        writes.append(text)
        return original(text)

    lines.write = counting  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(20):
            await client.get("/patients/1")
    assert len(read(lines)) == 20
    assert len(writes) < 5  # batched (the timer may flush once or twice), not one per line
