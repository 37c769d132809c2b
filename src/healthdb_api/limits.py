"""Request body limits, size and JSON nesting depth: a pure ASGI middleware.

A request whose declared ``Content-Length`` exceeds the limit is answered 413 without
reading its body. Otherwise the body is read (up to the limit) *before* the application
sees the request, so an oversized chunked/streamed body is also refused with 413 before
any route, dependency or database call runs. A JSON body (``application/json`` or
``+json``) nested deeper than ``max_json_depth`` is refused with 400 the same way: whatever
parses it afterwards (the suspicious-input scan, FastAPI, pydantic) only ever sees bounded
input, so nesting tens of thousands deep can neither exhaust the recursion limit nor put a
traceback in the log. The depth is measured without parsing (:func:`json_depth`). Answers
use the shared error body ``{"error": {"code": "payload_too_large", ...}}``.
"""

from __future__ import annotations

import operator
import re
from itertools import accumulate, repeat

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from healthdb_api.errors import error_response

PAYLOAD_TOO_LARGE = "payload_too_large"
JSON_TOO_DEEP = "json_too_deep"
#: Deeper than any request of this service needs (its bodies are one or two levels deep).
DEFAULT_MAX_JSON_DEPTH = 32

# A string, or an unterminated one up to the end: always a match at a quote, so the scan is
# linear however the quotes and backslashes are arranged.
_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*"?')
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
# Openers become 2 and closers 0: minus one each, a running sum is the nesting depth.
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def json_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON document nest (0 for a scalar), in C
    speed: strings are cut out, the brackets left are summed. Invalid JSON gets a number
    too; the parser that follows refuses it."""
    steps = _STRING.sub(b"", body).translate(None, _NOT_BRACKET).translate(_STEP)
    return max(accumulate(map(operator.sub, steps, repeat(1))), default=0)


def is_json(scope: Scope) -> bool:
    """Whether the request declares a JSON body (as FastAPI decides whether to parse it)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = bytes(value).decode("latin-1").split(";", 1)[0].strip().lower()
            return media == "application/json" or media.endswith("+json")
    return False


class BodyLimit:
    """Refuse HTTP request bodies larger than ``max_bytes`` with 413, and JSON bodies nested
    deeper than ``max_json_depth`` with 400."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    ) -> None:
        if max_bytes < 0 or max_json_depth < 1:
            raise ValueError("max_bytes must be >= 0 and max_json_depth >= 1")
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is None and not _chunked(scope):
            # No body announced (a GET, say): nothing to buffer or bound.
            await self.app(scope, receive, send)
            return
        if declared == -1:
            await _reject(scope, receive, send, 400, "bad_request", "invalid Content-Length")
            return
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        body: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away before sending its body: nothing to answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            body.append(chunk)
            if not message.get("more_body", False):
                break
        data = b"".join(body)
        if is_json(scope) and json_depth(data) > self.max_json_depth:
            await _reject(
                scope,
                receive,
                send,
                400,
                JSON_TOO_DEEP,
                f"JSON nested deeper than {self.max_json_depth} levels",
                {"max_json_depth": self.max_json_depth},
            )
            return
        await self.app(scope, replay_body(data, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _reject(
            scope,
            receive,
            send,
            413,
            PAYLOAD_TOO_LARGE,
            f"request body exceeds {self.max_bytes} bytes",
            {"max_bytes": self.max_bytes},
        )


def _chunked(scope: Scope) -> bool:
    return any(
        name == b"transfer-encoding" and b"chunked" in value.lower()
        for name, value in scope.get("headers", ())
    )


def _content_length(scope: Scope) -> int | None:
    """The declared length; ``None`` when absent, ``-1`` when malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
            return length if length >= 0 else -1
    return None


async def _reject(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    code: str,
    message: str,
    details: object = None,
) -> None:
    # The unread body stays on the wire: ask the server to close the connection.
    response = error_response(status, code, message, details, headers={"Connection": "close"})
    await response(scope, receive, send)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the buffered body once, then defers to the server's."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
