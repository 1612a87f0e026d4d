"""Small raw-ASGI helpers: read a bounded body, send bytes or a `{"error": ...}` answer.

The router is a raw ASGI app (no framework routing or request objects on the hot path).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from modelroll.errors import InvalidInput, PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


class ClientDisconnected(Exception):
    pass


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput(f"Content-Length must be an integer, got {declared[:40]!r}") from None
        if size > limit:
            raise PayloadTooLarge(f"the body is {size} bytes, the limit is {limit} bytes "
                                  "(MODELROLL_ROUTER_MAX_BODY_BYTES)")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes (MODELROLL_ROUTER_MAX_BODY_BYTES)")
        return body
    chunks = [body]
    total = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes (MODELROLL_ROUTER_MAX_BODY_BYTES)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_bytes(send: Send, status: int, body: bytes, content_type: bytes = JSON,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, status: int, message: str,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send_bytes(send, status, orjson.dumps({"error": message}), JSON, extra)


async def send_json(send: Send, status: int, data: Any) -> None:
    await send_bytes(send, status, orjson.dumps(data), JSON)
