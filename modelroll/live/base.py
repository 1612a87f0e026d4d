"""The live channel between router, controller and worker: one interface, two backends.

- split config: versioned per model; a watcher gets the latest on connect and every change after;
- metric samples: batched append, consumer-group reads with acknowledgement, bounded length;
- feedback join: a prediction stored by request id with a TTL, taken when its label arrives;
- job queue: enqueue, claim with a visibility timeout, ack, retry count, dead-letter after N;
- leader lock: acquire / renew / release, with a fencing token that grows on every new leader.

Every call on an unreachable backend raises `Unavailable` within a bounded time.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelroll.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class SplitConfig:
    """Traffic split for one model: percentage per variant (sums to 100), optional shadow.

    `baseline` is the variant that answers when another fails: the model's production variant (a rollout
    starts from it). Outside a rollout the split is that variant at 100 % with no `rollout_id`.
    """

    model: str
    weights: Mapping[str, float]
    shadow: str | None = None
    rollout_id: int | None = None
    step: int | None = None
    version: int = 0  # assigned by the channel on publish
    baseline: str | None = None

    def __post_init__(self) -> None:
        if not self.weights:
            raise InvalidInput(f"split of {self.model!r} needs at least one variant")
        for variant, pct in self.weights.items():
            if not 0 <= pct <= 100:
                raise InvalidInput(f"weight of {variant!r} must be in [0, 100], got {pct}")
        total = sum(self.weights.values())
        if abs(total - 100.0) > 1e-6:
            raise InvalidInput(f"weights of {self.model!r} must sum to 100, got {total}")
        if self.baseline is not None and self.baseline not in self.weights:
            raise InvalidInput(f"baseline {self.baseline!r} of {self.model!r} must be one of the split's variants "
                               f"{sorted(self.weights)}")

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "model": self.model, "weights": dict(self.weights), "shadow": self.shadow,
            "rollout_id": self.rollout_id, "step": self.step, "baseline": self.baseline, "version": self.version,
        })

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> SplitConfig:
        data = orjson.loads(raw)
        # Fields a newer publisher added are skipped, so a router mid-upgrade keeps following the split.
        return cls(**{name: value for name, value in data.items() if name in _SPLIT_FIELDS})


_SPLIT_FIELDS = frozenset(SplitConfig.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation recorded by a router.

    kind "request": one variant answered (or failed) one request;
    kind "memory":  a runner's memory gauge (`memory_bytes` = model cost, `memory_total_bytes` absolute), from
                    the runner of kind `runner`; only a reading with `memory_exact` is a measurement of the
                    model's own cost: without it the runner cannot measure that (inline, remote) and the
                    figures are 0 (so is a sample of a router older than the flag: its reading may be an estimate);
    kind "feedback": a label joined to a stored prediction (`correct`);
    kind "cannot_serve": a variant of the split that the router does not serve, and why (`reason`: its load
                    failed, its artifact failed the integrity check, ...), sent while that lasts.
    Latencies are the runner's own time (`latency_ms`) and the whole request (`total_ms`).
    """

    kind: str
    model: str
    variant: str
    ts: float
    rollout_id: int | None = None
    step: int | None = None
    request_id: str = ""
    latency_ms: float = 0.0
    total_ms: float = 0.0
    status: str = "ok"  # ok | error | timeout
    cpu_ms: float = 0.0
    batch_size: int = 1
    shadow: bool = False
    prediction: Any = None
    memory_bytes: int = 0
    memory_total_bytes: int = 0
    correct: bool | None = None
    runner: str = ""  # memory samples: inline | subprocess | http
    memory_exact: bool = False
    reason: str = ""  # cannot_serve samples

    def to_bytes(self) -> bytes:
        return orjson.dumps({k: getattr(self, k) for k in _SAMPLE_FIELDS})

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Sample:
        return cls(**orjson.loads(raw))


_SAMPLE_FIELDS = tuple(Sample.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job: `attempts` counts deliveries including this one."""

    id: str
    queue: str
    payload: bytes
    attempts: int


@dataclass(slots=True)
class SampleBatch:
    ids: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


class Subscription(abc.ABC):
    @abc.abstractmethod
    def close(self) -> None: ...


class LiveChannel(abc.ABC):
    # --- split config -------------------------------------------------------------
    @abc.abstractmethod
    def publish_split(self, split: SplitConfig) -> SplitConfig:
        """Store `split` as the model's newest version and notify watchers; returns it with its version."""

    @abc.abstractmethod
    def get_splits(self) -> dict[str, SplitConfig]: ...

    @abc.abstractmethod
    def watch_splits(self, callback: Callable[[SplitConfig], None]) -> Subscription:
        """Call `callback` with every model's latest split now, then with every change."""

    # --- samples ------------------------------------------------------------------
    @abc.abstractmethod
    def append_samples(self, samples: Sequence[Sample]) -> None: ...

    @abc.abstractmethod
    def read_samples(self, group: str, consumer: str, count: int, block_s: float = 0.0) -> SampleBatch:
        """New samples for `group`, plus those delivered to `consumer` earlier and never acknowledged."""

    @abc.abstractmethod
    def ack_samples(self, group: str, ids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def trimmed_samples(self) -> int:
        """Samples dropped by the length bound since the log began, so that no loss goes uncounted."""

    # --- feedback join ------------------------------------------------------------
    @abc.abstractmethod
    def put_prediction(self, request_id: str, record: bytes, ttl_s: float) -> None: ...

    def put_predictions(self, records: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        """Store many (request_id, record) at once; backends with a round trip per call batch it."""
        for request_id, record in records:
            self.put_prediction(request_id, record, ttl_s)

    def append_encoded(self, samples: Sequence[bytes], predictions: Sequence[tuple[str, bytes]],
                       ttl_s: float) -> None:
        """Append samples already encoded (`Sample.to_bytes`) and store prediction records, together.

        The router's flush: it encodes between requests; Redis writes both in one script call per chunk.
        """
        from modelroll.live.sample_codec import decode_sample, decode_samples

        self.put_predictions(predictions, ttl_s)  # first: a bad ttl_s is refused before anything is written
        if samples:
            decoded = decode_samples(list(samples))
            self.append_samples(decoded if decoded is not None else [decode_sample(raw) for raw in samples])

    @abc.abstractmethod
    def take_prediction(self, request_id: str) -> bytes | None:
        """Return and delete the record (None when unknown or expired)."""

    # --- job queue ----------------------------------------------------------------
    @abc.abstractmethod
    def enqueue_job(self, queue: str, payload: bytes) -> str: ...

    @abc.abstractmethod
    def claim_job(self, queue: str, consumer: str, visibility_timeout_s: float,
                  max_attempts: int) -> Job | None:
        """Next job, or one whose claim expired; jobs over `max_attempts` go to the dead letters."""

    @abc.abstractmethod
    def ack_job(self, job: Job) -> None: ...

    @abc.abstractmethod
    def extend_job(self, job: Job, consumer: str) -> bool:
        """Restart the visibility timeout of a job `consumer` still holds (a long job's heartbeat); False when
        another consumer took it over after its claim expired, or it was acked."""

    @abc.abstractmethod
    def dead_letters(self, queue: str) -> list[Job]: ...

    # --- leader lock --------------------------------------------------------------
    @abc.abstractmethod
    def acquire_lock(self, name: str, holder: str, ttl_s: float) -> int | None:
        """Fencing token if `holder` now holds the lock (a new, larger token for each new leader)."""

    @abc.abstractmethod
    def renew_lock(self, name: str, holder: str, ttl_s: float) -> bool: ...

    @abc.abstractmethod
    def release_lock(self, name: str, holder: str) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...
