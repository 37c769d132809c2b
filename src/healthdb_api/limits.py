"""Request body size limit: a pure ASGI middleware.

A request whose declared ``Content-Length`` exceeds the limit is answered 413 without
reading its body. Otherwise the body is read (up to the limit) *before* the application
sees the request, so an oversized chunked/streamed body is also refused with 413 before
any route, dependency or database call runs. The answer uses the shared error body
``{"error": {"code": "payload_too_large", ...}}``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from healthdb_api.errors import error_response

PAYLOAD_TOO_LARGE = "payload_too_large"


class BodySizeLimit:
    """Refuse HTTP request bodies larger than ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.app = app
        self.max_bytes = max_bytes

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
        await self.app(scope, replay_body(b"".join(body), receive), send)

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
