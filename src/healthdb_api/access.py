"""Request ids and the access log: a pure ASGI middleware, the outermost one.

Each HTTP request gets a request id (``X-Request-ID`` on the response, ``request_id`` in
``scope["state"]`` for the routes and the audit trail) and, when it ends, one access line:
method, route *template* (``/api/v1/patients/{patient_id}``, never the path with its ids,
never the query string), status, duration, request id and, once authenticated, the clinic.

PHI stays out of these lines by construction rather than by pattern matching: every field
is one of those above, typed, and none carries request data. That is why the access logger
has its own small formatter (:class:`AccessFormatter`) instead of the redacting renderer:
it is also the only line per request, so it must be cheap.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ACCESS_LOGGER",
    "AccessFormatter",
    "AccessLog",
    "BufferedLines",
    "clinic_of",
    "configure_access_log",
]

ACCESS_LOGGER = "healthdb_api.access"
_log = logging.getLogger(ACCESS_LOGGER)
_HEADER = b"x-request-id"


class AccessLog:
    """Give every HTTP request an id; log one line per request at INFO."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500  # until the app says otherwise: an exception that escapes is a 500
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_HEADER, raw_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if _log.isEnabledFor(logging.INFO):
                fields = {
                    "method": scope.get("method"),
                    "route": _route(scope),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "request_id": request_id,
                    "clinic_id": state.get("clinic_id"),
                }
                batch = _batched()
                if batch is not None:
                    batch.add(fields)  # no LogRecord: the line is all there is to it
                else:
                    _log.info("access", extra={"access": fields})


def _batched() -> BufferedLines | None:
    """The batching handler :func:`configure_access_log` installed, if it is the only one."""
    handlers = _log.handlers
    if len(handlers) == 1 and not _log.propagate and isinstance(handlers[0], BufferedLines):
        return handlers[0]
    return None


def clinic_of(scope: Scope, clinic_id: uuid.UUID) -> None:
    """Name the request's clinic in its access line (called once it is authenticated)."""
    scope.setdefault("state", {})["clinic_id"] = str(clinic_id)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched requests (404s) have no template: never log the raw path, it may hold ids.
    return path if isinstance(path, str) else "(unmatched)"


class AccessFormatter(logging.Formatter):
    """Renders access records only: their fields are fixed and typed (see module doc)."""

    def __init__(self, *, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        return self.render(getattr(record, "access", {}), record.created)

    def render(self, fields: dict[str, Any], created: float) -> str:
        """One line for ``fields`` of a request that ended at ``created`` (epoch seconds)."""
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        stamp = f"{when}.{int(created * 1000) % 1000:03d}Z"
        if self.json_lines:
            line = {"event": "access", "level": "info", "logger": ACCESS_LOGGER}
            return json.dumps({**line, "timestamp": stamp, **fields})
        return (
            f"{stamp} [info     ] access {fields.get('method')} {fields.get('route')} "
            f"{fields.get('status')} {fields.get('duration_ms')}ms "
            f"request_id={fields.get('request_id')} clinic_id={fields.get('clinic_id')}"
        )


class BufferedLines(logging.Handler):
    """Writes formatted lines to ``stream`` in batches: when ``capacity`` lines are waiting,
    and at least every ``interval`` seconds (a daemon thread), and at shutdown. One write
    per request cost a system call each; at a few thousand requests a second that was a
    twentieth of the service's CPU."""

    def __init__(self, stream: Any, *, capacity: int = 256, interval: float = 0.25) -> None:
        super().__init__()
        self.stream = stream
        self.capacity = capacity
        self._lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._tick, args=(interval,), name="healthdb-access-log", daemon=True
        )
        self._thread.start()

    def add(self, fields: dict[str, Any]) -> None:
        """An access line straight from its fields (the formatter must be AccessFormatter)."""
        formatter = self.formatter
        if isinstance(formatter, AccessFormatter):
            self._lines.append(formatter.render(fields, time.time()))
            if len(self._lines) >= self.capacity:
                self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        if len(self._lines) >= self.capacity:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            lines, self._lines = self._lines, []
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.flush()
            except (OSError, ValueError):  # the stream went away: nothing left to tell
                return


def configure_access_log(*, json_lines: bool, stream: Any = None) -> None:
    """Send access lines to ``stream`` (stderr by default) through :class:`AccessFormatter`,
    in batches (:class:`BufferedLines`).

    Their level follows the root logger's (``HEALTHDB_LOG_LEVEL``): INFO and below log them.
    Without this, access lines go to the root handlers like any other record."""
    import sys

    handler = BufferedLines(stream if stream is not None else sys.stderr)
    handler.setFormatter(AccessFormatter(json_lines=json_lines))
    for old in _log.handlers:
        old.close()
    _log.handlers[:] = [handler]
    _log.propagate = False
