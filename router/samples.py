"""Samples off the hot path: a bounded buffer the request appends to, a thread that flushes it in batches.

Requests never wait on the live channel: a full buffer drops its oldest entry (counted); a
flush that fails keeps what it could not send for the next try (counted as unsent once) and
backs off. Each record is encoded once (sample, and the prediction record a feedback label is
joined to) by `settle()`, which the app calls once per pass of the event loop, after the
responses of that pass are on the wire: the encoding then costs the event loop a few µs between
requests instead of millisecond bursts in the flusher thread, which (on a router pinned to one
core) stalled whichever request arrived during a burst. The thread sends encoded chunks, settles
what no response settled (shadow records) and samples runner memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from modelroll.errors import ModelrollError
from modelroll.live.base import LiveChannel, Sample
from router.records import RequestRecord, encode_prediction, encode_sample

log = logging.getLogger(__name__)

# Rows per channel call: a failure resends only the chunks not yet sent, and each call's Lua script keeps
# Redis busy for ~1 ms at most.
_SEND_CHUNK = 256
_BACKOFF_MAX_S = 5.0


class Recorder:
    """Bounded sample buffer with a background flusher thread; counts every sample it loses."""

    def __init__(self, channel: LiveChannel, *, capacity: int, flush_interval_s: float, feedback_ttl_s: float,
                 memory_interval_s: float = 2.0,
                 memory_probe: Callable[[], list[Sample]] | None = None,
                 on_drop: Callable[[int], None] | None = None,
                 on_records: Callable[[list[RequestRecord]], None] | None = None) -> None:
        self._channel = channel
        self._capacity = capacity
        self._interval_s = flush_interval_s
        self._ttl_s = feedback_ttl_s
        self._memory_interval_s = memory_interval_s
        self._memory_probe = memory_probe
        self._on_drop = on_drop
        self._on_records = on_records
        self._buffer: deque[RequestRecord | Sample] = deque()  # added, not yet encoded
        self._ready: deque[tuple[bytes, tuple[str, bytes] | None]] = deque()  # encoded, not yet sent
        self._retry_samples: list[bytes] = []
        self._retry_predictions: list[tuple[str, bytes]] = []
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.dropped = 0
        self.predictions_dropped = 0
        self.unsent = 0
        self.sent = 0
        self.degraded = False
        self.last_error = ""
        self._thread: threading.Thread | None = None

    # --- hot path -----------------------------------------------------------------
    def add(self, item: RequestRecord | Sample) -> None:
        if len(self._buffer) + len(self._ready) >= self._capacity:
            try:
                (self._ready or self._buffer).popleft()
            except IndexError:
                pass
            else:
                self.dropped += 1
                if self._on_drop is not None:
                    self._on_drop(1)
        self._buffer.append(item)

    def settle(self) -> None:
        """Encode what was added (usually this request's one record); called after the response is sent."""
        records: list[RequestRecord] = []
        popleft = self._buffer.popleft
        ready = self._ready.append
        ttl_s = self._ttl_s
        while True:
            try:
                item = popleft()
            except IndexError:
                break
            if isinstance(item, RequestRecord):
                records.append(item)
                ready((encode_sample(item), encode_prediction(item, ttl_s)))
            else:
                ready((item.to_bytes(), None))
        if records and self._on_records is not None:
            try:
                self._on_records(records)
            except Exception:  # a metrics bug must not cost the samples
                log.exception("metrics hook failed on %d records", len(records))

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
        return len(self._buffer) + len(self._ready) + len(self._retry_samples)

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
        """Send everything buffered now; raises the channel's error (what was not sent is kept for the next try)."""
        self.settle()
        with self._flush_lock:
            sent = 0
            while True:
                samples, predictions, retried = self._drain()
                if not samples and not predictions:
                    return sent
                done = 0
                try:
                    while done < len(samples) or done < len(predictions):
                        chunk = samples[done: done + _SEND_CHUNK]
                        self._channel.append_encoded(chunk, predictions[done: done + _SEND_CHUNK], self._ttl_s)
                        done += _SEND_CHUNK
                        self.sent += len(chunk)
                        sent += len(chunk)
                except ModelrollError as exc:
                    self._keep_for_retry(samples[done:], predictions[done:], max(0, retried - done))
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

    def _keep_for_retry(self, samples: list[bytes], predictions: list[tuple[str, bytes]], retried: int) -> None:
        self.unsent += max(0, len(samples) - retried)  # each sample counts once, however many tries
        overflow = len(samples) - self._capacity
        if overflow > 0:
            del samples[:overflow]
            self.dropped += overflow
            if self._on_drop is not None:
                self._on_drop(overflow)
        excess = len(predictions) - self._capacity
        if excess > 0:  # unbounded otherwise during a long outage; their labels will be answered "unknown"
            del predictions[:excess]
            self.predictions_dropped += excess
        self._retry_samples = samples
        self._retry_predictions = predictions

    def _drain(self) -> tuple[list[bytes], list[tuple[str, bytes]], int]:
        samples, self._retry_samples = self._retry_samples, []
        predictions, self._retry_predictions = self._retry_predictions, []
        retried = len(samples)
        popleft = self._ready.popleft
        for _ in range(_SEND_CHUNK):
            try:
                sample, prediction = popleft()
            except IndexError:
                break
            samples.append(sample)
            if prediction is not None:
                predictions.append(prediction)
        return samples, predictions, retried
