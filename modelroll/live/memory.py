"""The in-process live channel of the embedded mode: the Redis backend's semantics in one process.

Thread-safe; one instance is shared by the router, controller and worker of a process.
Clocks are injected (`now` for TTLs and timeouts) so expiry is testable without sleeping.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from modelroll.errors import InvalidInput
from modelroll.live.base import Job, LiveChannel, Sample, SampleBatch, SplitConfig, Subscription
from modelroll.live.memory_state import JobQueue, LockTable, StreamIds

log = logging.getLogger(__name__)

DEFAULT_SAMPLES_MAX_LEN = 1_000_000
DEFAULT_PREDICTIONS_MAX_LEN = 1_000_000


class MemorySubscription(Subscription):
    """One watcher: callbacks run one at a time, never with an older version than already delivered."""

    def __init__(self, channel: MemoryChannel, callback: Callable[[SplitConfig], None]) -> None:
        self._channel = channel
        self._callback = callback
        self._lock = threading.RLock()  # re-entrant: a callback may publish a split itself
        self._seen: dict[str, int] = {}
        self.callback_errors = 0

    def deliver(self, split: SplitConfig) -> None:
        with self._lock:
            if split.version <= self._seen.get(split.model, 0):
                return
            self._seen[split.model] = split.version
            try:
                self._callback(split)
            except Exception:
                self.callback_errors += 1
                log.exception("split watcher failed on model=%s version=%d", split.model, split.version)

    def close(self) -> None:
        self._channel._unwatch(self)


@dataclass(slots=True)
class _Group:
    next_n: int  # absolute number of the next entry never delivered to this group
    pending: dict[str, tuple[int, str]] = field(default_factory=dict)  # id -> (entry number, consumer)


class MemoryChannel(LiveChannel):
    """Splits, samples, predictions, jobs and locks in memory, guarded by one lock per concern."""

    def __init__(self, samples_max_len: int = DEFAULT_SAMPLES_MAX_LEN,
                 now: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                 predictions_max_len: int = DEFAULT_PREDICTIONS_MAX_LEN) -> None:
        if samples_max_len < 1:
            raise InvalidInput(f"samples_max_len must be at least 1, got {samples_max_len}")
        if predictions_max_len < 1:
            raise InvalidInput(f"predictions_max_len must be at least 1, got {predictions_max_len}")
        self._now = now
        self._ids = StreamIds(wall_ms)
        self._max_len = samples_max_len

        self._split_lock = threading.Lock()
        self._splits: dict[str, SplitConfig] = {}
        self._watchers: list[MemorySubscription] = []

        # Sample log: entries[i] has absolute number first_n + i; entries before `head` are trimmed.
        self._samples = threading.Condition()
        self._entries: list[tuple[str, Sample]] = []
        self._first_n = 0
        self._head = 0
        self._trimmed = 0
        self._groups: dict[str, _Group] = {}

        self._pred_lock = threading.Lock()
        self._predictions: dict[str, tuple[bytes, float]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._predictions_max = predictions_max_len
        self.predictions_dropped = 0  # dropped before their TTL to stay within predictions_max_len

        self._jobs_lock = threading.Lock()
        self._queues: dict[str, JobQueue] = {}
        self._locks = LockTable(now)

    # --- split config -------------------------------------------------------------
    def publish_split(self, split: SplitConfig) -> SplitConfig:
        with self._split_lock:
            previous = self._splits.get(split.model)
            stored = dataclasses.replace(split, version=(previous.version if previous else 0) + 1)
            self._splits[split.model] = stored
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.deliver(stored)
        return stored

    def get_splits(self) -> dict[str, SplitConfig]:
        with self._split_lock:
            return dict(self._splits)

    def watch_splits(self, callback: Callable[[SplitConfig], None]) -> Subscription:
        watcher = MemorySubscription(self, callback)
        with self._split_lock:
            self._watchers.append(watcher)
            current = list(self._splits.values())
        for split in current:
            watcher.deliver(split)
        return watcher

    def _unwatch(self, watcher: MemorySubscription) -> None:
        with self._split_lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    # --- samples ------------------------------------------------------------------
    def append_samples(self, samples: Sequence[Sample]) -> None:
        if not samples:
            return
        with self._samples:
            for sample in samples:
                self._entries.append((self._ids.next(), sample))
            excess = len(self._entries) - self._head - self._max_len
            if excess > 0:
                self._head += excess
                self._trimmed += excess
                if self._head > len(self._entries) // 2:
                    del self._entries[: self._head]
                    self._first_n += self._head
                    self._head = 0
            self._samples.notify_all()

    def read_samples(self, group: str, consumer: str, count: int, block_s: float = 0.0) -> SampleBatch:
        if count < 1:
            raise InvalidInput(f"count must be at least 1, got {count}")
        # A real clock: waiting on the condition takes real time, whatever clock the TTLs run on.
        deadline = time.monotonic() + max(block_s, 0.0)
        with self._samples:
            state = self._groups.get(group)
            if state is None:
                state = self._groups[group] = _Group(next_n=self._first_n + self._head)
            batch = self._pending_for(state, consumer, count)
            while True:
                self._deliver_new(state, consumer, count, batch)
                remaining = deadline - time.monotonic()
                if batch.ids or remaining <= 0:
                    return batch
                self._samples.wait(remaining)

    def _pending_for(self, state: _Group, consumer: str, count: int) -> SampleBatch:
        batch = SampleBatch()
        live_from = self._first_n + self._head
        for sample_id, (number, owner) in list(state.pending.items()):
            if owner != consumer:
                continue
            if number < live_from:  # trimmed while pending: nothing left to redeliver
                del state.pending[sample_id]
                continue
            batch.ids.append(sample_id)
            batch.samples.append(self._entries[number - self._first_n][1])
            if len(batch.ids) >= count:
                break
        return batch

    def _deliver_new(self, state: _Group, consumer: str, count: int, batch: SampleBatch) -> None:
        start = max(state.next_n, self._first_n + self._head) - self._first_n
        fresh = self._entries[start: start + count - len(batch.ids)]
        for offset, (sample_id, sample) in enumerate(fresh):
            state.pending[sample_id] = (self._first_n + start + offset, consumer)
            batch.ids.append(sample_id)
            batch.samples.append(sample)
        state.next_n = self._first_n + start + len(fresh)

    def ack_samples(self, group: str, ids: Sequence[str]) -> None:
        with self._samples:
            state = self._groups.get(group)
            if state is None:
                return
            for sample_id in ids:
                state.pending.pop(sample_id, None)

    def trimmed_samples(self) -> int:
        with self._samples:
            return self._trimmed

    # --- feedback join ------------------------------------------------------------
    def put_prediction(self, request_id: str, record: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise InvalidInput(f"prediction ttl_s must be positive, got {ttl_s}")
        with self._pred_lock:
            now = self._now()
            self._expire_predictions(now)
            expires_at = now + ttl_s
            self._predictions[request_id] = (record, expires_at)
            heapq.heappush(self._expiries, (expires_at, request_id))
            self._bound_predictions()

    def take_prediction(self, request_id: str) -> bytes | None:
        with self._pred_lock:
            entry = self._predictions.pop(request_id, None)
            if entry is None or entry[1] <= self._now():
                return None
            return entry[0]

    def _expire_predictions(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, request_id = heapq.heappop(self._expiries)
            entry = self._predictions.get(request_id)
            if entry is not None and entry[1] == expires_at:
                del self._predictions[request_id]

    def _bound_predictions(self) -> None:
        """Memory stays bounded however long the TTL: beyond `predictions_max_len` the predictions closest to
        expiry go first (counted); the expiry heap is rebuilt once taken or renewed entries crowd it."""
        while len(self._predictions) > self._predictions_max:
            expires_at, request_id = heapq.heappop(self._expiries)
            entry = self._predictions.get(request_id)
            if entry is not None and entry[1] == expires_at:
                del self._predictions[request_id]
                self.predictions_dropped += 1
        if len(self._expiries) > 2 * len(self._predictions) + 1024:
            self._expiries = [(expires_at, request_id) for request_id, (_, expires_at) in self._predictions.items()]
            heapq.heapify(self._expiries)

    # --- job queue ----------------------------------------------------------------
    def enqueue_job(self, queue: str, payload: bytes) -> str:
        with self._jobs_lock:
            job_id = self._ids.next()
            self._queues.setdefault(queue, JobQueue(queue)).enqueue(job_id, payload)
            return job_id

    def claim_job(self, queue: str, consumer: str, visibility_timeout_s: float,
                  max_attempts: int) -> Job | None:
        if max_attempts < 1:
            raise InvalidInput(f"max_attempts must be at least 1, got {max_attempts}")
        with self._jobs_lock:
            jobs = self._queues.get(queue)
            return jobs.claim(consumer, visibility_timeout_s, max_attempts, self._now()) if jobs else None

    def ack_job(self, job: Job) -> None:
        with self._jobs_lock:
            jobs = self._queues.get(job.queue)
            if jobs is not None:
                jobs.ack(job.id)

    def extend_job(self, job: Job, consumer: str) -> bool:
        with self._jobs_lock:
            jobs = self._queues.get(job.queue)
            return jobs is not None and jobs.extend(job.id, consumer, self._now())

    def dead_letters(self, queue: str) -> list[Job]:
        with self._jobs_lock:
            jobs = self._queues.get(queue)
            return list(jobs.dead) if jobs else []

    # --- leader lock --------------------------------------------------------------
    def acquire_lock(self, name: str, holder: str, ttl_s: float) -> int | None:
        return self._locks.acquire(name, holder, ttl_s)

    def renew_lock(self, name: str, holder: str, ttl_s: float) -> bool:
        return self._locks.renew(name, holder, ttl_s)

    def release_lock(self, name: str, holder: str) -> None:
        self._locks.release(name, holder)

    def close(self) -> None:
        with self._split_lock:
            self._watchers.clear()
