"""Request bodies on the controller: at most `max_body_bytes`, all of it within `read_timeout_s`, before any handler.

A declared Content-Length over the limit is refused at once, unread (413); a chunked body is refused as soon as it
passes the limit (413); a body that has not fully arrived `read_timeout_s` after its headers is refused (408). Each
refusal is the JSON envelope with `Connection: close`, so the rest of the body is never read. A body within the
limit is read here and handed on as one message: no handler, and no auth check, ever parses more than the limit.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelroll.errors import InvalidInput, ModelrollError, PayloadTooLarge, RequestTimeout

log = logging.getLogger(__name__)


class BodyLimit:
    """ASGI middleware; `MODELROLL_CONTROLLER_MAX_BODY_BYTES` and `MODELROLL_CONTROLLER_READ_TIMEOUT_S`."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.too_large = (f"request body over {max_body_bytes} bytes, the controller's limit "
                          "(MODELROLL_CONTROLLER_MAX_BODY_BYTES); ops API bodies are small JSON objects")
        self.too_slow = (f"request body not received within {read_timeout_s:g} s of its headers "
                         "(MODELROLL_CONTROLLER_READ_TIMEOUT_S): send the whole body the Content-Length declares")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is None and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body (RFC 9112 §6.3)
            return
        if declared is not None:
            if not declared.strip().isdigit():
                await _refuse(send, InvalidInput(f"Content-Length must be a number of bytes, got {declared[:40]!r}"))
                return
            if int(declared) > self.max_body_bytes:
                await _refuse(send, PayloadTooLarge(f"{self.too_large} (Content-Length: {int(declared)})"))
                return
        try:
            async with asyncio.timeout(self.read_timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            log.info("request body timed out path=%s timeout_s=%s", scope.get("path"), self.read_timeout_s)
            await _refuse(send, RequestTimeout(self.too_slow))
            return
        except PayloadTooLarge as exc:
            await _refuse(send, exc)
            return
        if body is None:
            return  # the client went away before its body arrived: there is no one to answer
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(self.too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then the server's own messages (a disconnect) as they come."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send: Send, error: ModelrollError) -> None:
    """The envelope, then close: the body left unread must not be taken for the next request."""
    body = orjson.dumps({"error": error.message})
    await send({"type": "http.response.start", "status": error.status_code, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
