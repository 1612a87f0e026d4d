"""Small raw-ASGI helpers: read a bounded body in bounded time, send bytes or a `{"error": ...}` answer.

The router is a raw ASGI app (no framework routing or request objects on the hot path).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from modelroll.errors import InvalidInput, PayloadTooLarge, RequestTimeout

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


class ClientDisconnected(Exception):
    pass


class _Deadline:
    """Cancels the task reading a body when its time is up, and says so (a shutdown's cancel is not a timeout)."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


async def read_body(receive: Receive, declared: bytes | None, limit: int, timeout_s: float) -> bytes:
    """The whole request body: at most `limit` bytes (else 413), all of it within `timeout_s` (else 408)."""
    size = None
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput(f"Content-Length must be an integer, got {declared[:40]!r}") from None
        if size > limit:
            raise PayloadTooLarge(f"the body is {size} bytes, the limit is {limit} bytes "
                                  "(MODELROLL_ROUTER_MAX_BODY_BYTES)")
    # A timer that cancels this task, as the candidate's deadline does (~1.3 µs a request, a third of asyncio.timeout):
    # the body of one request usually sits in the server's buffer already, but a client may never send it.
    task = asyncio.current_task()
    assert task is not None
    deadline = _Deadline(task)
    timer = task.get_loop().call_later(timeout_s, deadline)
    chunks: list[bytes] = []
    try:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise PayloadTooLarge(f"the body is over the limit of {limit} bytes "
                                      "(MODELROLL_ROUTER_MAX_BODY_BYTES)")
            return body
        chunks.append(body)
        return await _read_more(receive, limit, chunks, len(body))
    except asyncio.CancelledError:
        if not deadline.fired or task.uncancel():
            raise  # cancelled for another reason: the server is shutting down
        arrived = sum(map(len, chunks))
        raise RequestTimeout(f"request body not received within {timeout_s:g} s (MODELROLL_ROUTER_READ_TIMEOUT_S): "
                             f"{arrived} of {'the' if size is None else size} declared bytes arrived; send the whole "
                             "body the Content-Length declares") from None
    finally:
        timer.cancel()


async def _read_more(receive: Receive, limit: int, chunks: list[bytes], total: int) -> bytes:
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
