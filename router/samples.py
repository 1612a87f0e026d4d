"""Samples off the hot path: a bounded buffer the request appends to, a thread that flushes it in batches.

Requests never wait on the live channel: a full buffer drops its oldest entry (counted); a
flush that fails keeps its batch for the next try (counted as unsent once) and backs off.
The same thread stores prediction records for the feedback join and samples runner memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from modelroll.errors import ModelrollError
from modelroll.live.base import LiveChannel, Sample

log = logging.getLogger(__name__)

_BATCH = 5000
_BACKOFF_MAX_S = 5.0


def compact_prediction(outputs: dict[str, np.ndarray[Any, Any]] | None) -> list[int] | None:
    """Class per row: an integer label output as is, else the argmax of the first [N, C] float output."""
    if not outputs:
        return None
    for array in outputs.values():
        if array.dtype.kind in "iu" and (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
            return array.reshape(-1).tolist()
    for array in outputs.values():
        if array.dtype.kind == "f" and array.ndim == 2 and array.shape[1] > 1:
            return array.argmax(axis=1).tolist()  # type: ignore[no-any-return]
    return None


class RequestRecord:
    """What the hot path hands over: cheap to build, turned into a `Sample` by the flusher."""

    __slots__ = ("batch_size", "cpu_ms", "keep_prediction", "latency_ms", "model", "outputs", "pair",
                 "request_id", "rollout_id", "shadow", "status", "step", "total_ms", "ts", "variant")

    def __init__(self, model: str, variant: str, ts: float, rollout_id: int | None, step: int | None,
                 request_id: str, latency_ms: float, total_ms: float, status: str, cpu_ms: float,
                 batch_size: int, shadow: bool, outputs: Any, keep_prediction: bool,
                 pair: RequestRecord | None = None) -> None:
        self.model = model
        self.variant = variant
        self.ts = ts
        self.rollout_id = rollout_id
        self.step = step
        self.request_id = request_id
        self.latency_ms = latency_ms
        self.total_ms = total_ms
        self.status = status
        self.cpu_ms = cpu_ms
        self.batch_size = batch_size
        self.shadow = shadow
        self.outputs = outputs
        self.keep_prediction = keep_prediction  # False: a shadow partner will store the pair's record
        self.pair = pair  # shadow side: the baseline's record of the same request


class Recorder:
    """Bounded sample buffer with a background flusher thread; counts every sample it loses."""

    def __init__(self, channel: LiveChannel, *, capacity: int, flush_interval_s: float, feedback_ttl_s: float,
                 memory_interval_s: float = 2.0,
                 memory_probe: Callable[[], list[Sample]] | None = None,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self._channel = channel
        self._capacity = capacity
        self._interval_s = flush_interval_s
        self._ttl_s = feedback_ttl_s
        self._memory_interval_s = memory_interval_s
        self._memory_probe = memory_probe
        self._on_drop = on_drop
        self._buffer: deque[RequestRecord | Sample] = deque()
        self._retry_samples: list[Sample] = []
        self._retry_predictions: list[tuple[str, bytes]] = []
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.dropped = 0
        self.unsent = 0
        self.sent = 0
        self.degraded = False
        self.last_error = ""
        self._thread: threading.Thread | None = None

    # --- hot path -----------------------------------------------------------------
    def add(self, item: RequestRecord | Sample) -> None:
        if len(self._buffer) >= self._capacity:
            try:
                self._buffer.popleft()
            except IndexError:
                pass
            else:
                self.dropped += 1
                if self._on_drop is not None:
                    self._on_drop(1)
        self._buffer.append(item)

    # --- background ---------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="modelroll-samples", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        with contextlib.suppress(ModelrollError):
            self.flush()

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._retry_samples)

    def _loop(self) -> None:
        backoff_s = self._interval_s
        next_memory = time.monotonic()
        while not self._stop.is_set():
            if self._memory_probe is not None and time.monotonic() >= next_memory:
                next_memory = time.monotonic() + self._memory_interval_s
                try:
                    for sample in self._memory_probe():
                        self.add(sample)
                except Exception:
                    log.exception("runner memory probe failed")
            try:
                self.flush()
                backoff_s = self._interval_s
            except ModelrollError:
                backoff_s = min(max(backoff_s * 2, self._interval_s), _BACKOFF_MAX_S)
            except Exception:
                log.exception("sample flush failed unexpectedly")
                backoff_s = min(max(backoff_s * 2, self._interval_s), _BACKOFF_MAX_S)
            self._wake.wait(backoff_s)
            self._wake.clear()

    def flush(self) -> int:
        """Send everything buffered now; raises the channel's error (batch kept for the next try)."""
        with self._flush_lock:
            sent = 0
            while True:
                samples, predictions, retried = self._drain()
                if not samples and not predictions:
                    return sent
                try:
                    if samples:
                        self._channel.append_samples(samples)
                        self.sent += len(samples)
                        sent += len(samples)
                    samples = []
                    if predictions:
                        self._channel.put_predictions(predictions, self._ttl_s)
                        predictions = []
                except ModelrollError as exc:
                    self._keep_for_retry(samples, predictions, retried)
                    if not self.degraded:
                        log.warning("live channel unreachable, %d samples kept for retry: %s",
                                    len(self._retry_samples), exc)
                    self.degraded = True
                    self.last_error = exc.message
                    raise
                if self.degraded:
                    log.info("live channel reachable again; samples flowing")
                self.degraded = False
                self.last_error = ""

    def _keep_for_retry(self, samples: list[Sample], predictions: list[tuple[str, bytes]], retried: int) -> None:
        self.unsent += max(0, len(samples) - retried)  # each sample counts once, however many tries
        self._retry_samples = samples
        self._retry_predictions = predictions
        overflow = len(self._retry_samples) - self._capacity
        if overflow > 0:
            del self._retry_samples[:overflow]
            self.dropped += overflow
            if self._on_drop is not None:
                self._on_drop(overflow)

    def _drain(self) -> tuple[list[Sample], list[tuple[str, bytes]], int]:
        samples, self._retry_samples = self._retry_samples, []
        predictions, self._retry_predictions = self._retry_predictions, []
        retried = len(samples)
        buffer = self._buffer
        for _ in range(_BATCH):
            try:
                item = buffer.popleft()
            except IndexError:
                break
            if isinstance(item, Sample):
                samples.append(item)
                continue
            samples.append(self._sample_of(item))
            record = self._prediction_record(item)
            if record is not None:
                predictions.append(record)
        return samples, predictions, retried

    @staticmethod
    def _sample_of(r: RequestRecord) -> Sample:
        prediction = compact_prediction(r.outputs) if r.status == "ok" else None
        return Sample(kind="request", model=r.model, variant=r.variant, ts=r.ts, rollout_id=r.rollout_id,
                      step=r.step, request_id=r.request_id, latency_ms=r.latency_ms, total_ms=r.total_ms,
                      status=r.status, cpu_ms=r.cpu_ms, batch_size=r.batch_size, shadow=r.shadow,
                      prediction=prediction)

    def _prediction_record(self, r: RequestRecord) -> tuple[str, bytes] | None:
        if not r.keep_prediction or not r.request_id:
            return None
        predictions: dict[str, Any] = {}
        shadow_variant = None
        base = r.pair if r.pair is not None else r
        if base.status == "ok":
            predictions[base.variant] = compact_prediction(base.outputs)
        if r.pair is not None and r.status == "ok":
            predictions[r.variant] = compact_prediction(r.outputs)
            shadow_variant = r.variant
        if not predictions or all(p is None for p in predictions.values()):
            return None
        return r.request_id, orjson.dumps({
            "model": base.model, "rollout_id": base.rollout_id, "step": base.step,
            "predictions": predictions, "shadow_variant": shadow_variant, "expires_at": base.ts + self._ttl_s,
        })
