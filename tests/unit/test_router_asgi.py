"""Reading a request body in bounded time: a late body is a 408, a shutdown's cancel stays a cancel."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from modelroll.errors import RequestTimeout
from router.asgi import ReadDeadlines, read_body


def _stalled_after(first: bytes) -> Any:
    """A receive that gives `first` (more to come), then never anything again."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": first, "more_body": True}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def test_a_body_that_stops_arriving_is_a_408_within_a_quarter_past_the_timeout() -> None:
    deadlines = ReadDeadlines(0.2)

    async def go() -> float:
        start = time.monotonic()
        with pytest.raises(RequestTimeout, match="5 of 100 declared bytes arrived"):
            await read_body(_stalled_after(b"12345"), b"100", 1000, deadlines)
        return time.monotonic() - start

    elapsed = asyncio.run(go())
    assert 0.2 <= elapsed < 0.2 * 1.25 + 0.2  # checked every 0.05 s; slack for a busy machine
    assert not deadlines._reading and not deadlines._late


def test_a_read_cancelled_for_another_reason_stays_cancelled() -> None:
    deadlines = ReadDeadlines(30.0)

    async def go() -> None:
        task = asyncio.create_task(read_body(_stalled_after(b""), b"100", 1000, deadlines))
        await asyncio.sleep(0.05)
        task.cancel()  # the server shutting down
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert not deadlines._reading and not deadlines._late


def test_a_whole_body_is_read_and_leaves_nothing_behind() -> None:
    deadlines = ReadDeadlines(30.0)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def go() -> bytes:
        return await read_body(receive, b"2", 1000, deadlines)

    assert asyncio.run(go()) == b"{}"
    assert not deadlines._reading
