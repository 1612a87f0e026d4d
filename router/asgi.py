"""Small raw-ASGI helpers: read a bounded body in bounded time, send bytes or a `{"error": ...}` answer.

The router is a raw ASGI app (no framework routing or request objects on the hot path).
"""

from __future__ import annotations

import asyncio
import weakref
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


class ReadDeadlines:
    """Ends request-body reads that outlast `timeout_s`, `timeout_s` to 1.25 × `timeout_s` after they began.

    A read registers its task (two dict operations); one check per event loop, every quarter of the timeout (at
    most every second), cancels the reads past it. A timer per read cost ~3 µs a request under load (a uvloop
    handle made and closed), a tenth of the router's own CPU per request at batch 1.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._every_s = min(1.0, timeout_s / 4)
        self._reading: dict[asyncio.Task[Any], float] = {}  # task -> when its read began, on its loop's clock
        self._late: set[asyncio.Task[Any]] = set()  # cancelled by a check, not yet told
        self._checked: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()  # loops checked every _every_s
        self._last: asyncio.AbstractEventLoop | None = None  # the loop of the last read (one loop per process, mostly)

    def begin(self, task: asyncio.Task[Any]) -> None:
        loop = task.get_loop()
        if loop is not self._last:
            if loop not in self._checked:
                self._checked.add(loop)
                loop.call_later(self._every_s, self._check, loop)
            self._last = loop
        self._reading[task] = loop.time()

    def end(self, task: asyncio.Task[Any]) -> bool:
        """The read of `task` is over (again: no-op); True the first time after a check cancelled it for being late."""
        self._reading.pop(task, None)
        if self._late and task in self._late:
            self._late.discard(task)
            return True
        return False

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, began in list(self._reading.items()):
            if now - began >= self.timeout_s and task not in self._late and task.get_loop() is loop:
                self._late.add(task)
                task.cancel()
        loop.call_later(self._every_s, self._check, loop)  # until the loop closes: one callback a second at most


async def read_body(receive: Receive, declared: bytes | None, limit: int, deadlines: ReadDeadlines) -> bytes:
    """The whole request body: at most `limit` bytes (else 413), all of it in time (else 408, see `ReadDeadlines`)."""
    size = None
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput(f"Content-Length must be an integer, got {declared[:40]!r}") from None
        if size > limit:
            raise PayloadTooLarge(f"the body is {size} bytes, the limit is {limit} bytes "
                                  "(MODELROLL_ROUTER_MAX_BODY_BYTES)")
    task = asyncio.current_task()
    assert task is not None
    deadlines.begin(task)
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
        if not deadlines.end(task) or task.uncancel():
            raise  # cancelled for another reason: the server is shutting down
        arrived = sum(map(len, chunks))
        raise RequestTimeout(f"request body not received within {deadlines.timeout_s:g} s "
                             f"(MODELROLL_ROUTER_READ_TIMEOUT_S): {arrived} of {'the' if size is None else size} "
                             "declared bytes arrived; send the whole body the Content-Length declares") from None
    finally:
        deadlines.end(task)


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
