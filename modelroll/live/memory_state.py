"""State of the in-process channel's job queues, locks and stream ids, as Redis keeps it.

Plain objects over an injected clock; `MemoryChannel` does the locking around the queues.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from modelroll.errors import InvalidInput
from modelroll.live.base import Job


class StreamIds:
    """Ids like Redis stream ids, "<ms>-<seq>", strictly increasing even if the wall clock steps back."""

    def __init__(self, wall_ms: Callable[[], int]) -> None:
        self._wall_ms = wall_ms
        self._lock = threading.Lock()
        self._last = (0, -1)

    def next(self) -> str:
        with self._lock:
            ms = self._wall_ms()
            last_ms, last_seq = self._last
            self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
            return f"{self._last[0]}-{self._last[1]}"


def id_key(stream_id: str) -> tuple[int, int]:
    """Sort key of a stream id: compare ids numerically, as Redis does, never as strings."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class _Delivery:
    consumer: str
    delivered_at: float
    count: int


@dataclass(slots=True)
class JobQueue:
    """One queue: undelivered ids, deliveries awaiting an ack (the pending list) and dead letters."""

    name: str
    payloads: dict[str, bytes] = field(default_factory=dict)
    fresh: deque[str] = field(default_factory=deque)
    pending: dict[str, _Delivery] = field(default_factory=dict)
    dead: list[Job] = field(default_factory=list)

    def enqueue(self, job_id: str, payload: bytes) -> None:
        self.payloads[job_id] = payload
        self.fresh.append(job_id)

    def claim(self, consumer: str, visibility_timeout_s: float, max_attempts: int, now: float) -> Job | None:
        # Expired claims first, oldest id first (what XAUTOCLAIM from 0-0 does), then new jobs.
        for job_id in sorted(self.pending, key=id_key):
            delivery = self.pending[job_id]
            if now - delivery.delivered_at < visibility_timeout_s:
                continue
            delivery.count += 1
            if delivery.count > max_attempts:
                del self.pending[job_id]
                self.dead.append(Job(job_id, self.name, self.payloads.pop(job_id), delivery.count - 1))
                continue
            delivery.consumer, delivery.delivered_at = consumer, now
            return Job(job_id, self.name, self.payloads[job_id], delivery.count)
        if not self.fresh:
            return None
        job_id = self.fresh.popleft()
        self.pending[job_id] = _Delivery(consumer, now, 1)
        return Job(job_id, self.name, self.payloads[job_id], 1)

    def extend(self, job_id: str, consumer: str, now: float) -> bool:
        delivery = self.pending.get(job_id)
        if delivery is None or delivery.consumer != consumer:
            return False
        delivery.delivered_at = now
        return True

    def ack(self, job_id: str) -> None:
        if self.pending.pop(job_id, None) is not None:
            self.payloads.pop(job_id, None)


@dataclass(slots=True)
class _Lease:
    holder: str
    token: int
    expires_at: float


class LockTable:
    """Leases by name; each new holder gets a fencing token larger than every earlier one."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}
        self._tokens: dict[str, int] = {}

    def acquire(self, name: str, holder: str, ttl_s: float) -> int | None:
        _check_ttl(ttl_s)
        with self._lock:
            now = self._now()
            lease = self._leases.get(name)
            if lease is not None and lease.expires_at > now:
                if lease.holder != holder:
                    return None
                lease.expires_at = now + ttl_s
                return lease.token
            token = self._tokens.get(name, 0) + 1
            self._tokens[name] = token
            self._leases[name] = _Lease(holder, token, now + ttl_s)
            return token

    def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        _check_ttl(ttl_s)
        with self._lock:
            now = self._now()
            lease = self._leases.get(name)
            if lease is None or lease.holder != holder or lease.expires_at <= now:
                return False
            lease.expires_at = now + ttl_s
            return True

    def release(self, name: str, holder: str) -> None:
        with self._lock:
            lease = self._leases.get(name)
            if lease is not None and lease.holder == holder:
                del self._leases[name]


def _check_ttl(ttl_s: float) -> None:
    if ttl_s <= 0:
        raise InvalidInput(f"lock ttl_s must be positive, got {ttl_s}")
