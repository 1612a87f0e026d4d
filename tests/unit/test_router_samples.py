"""Sample recording off the hot path: bounded buffer, batched flush, prediction records, feedback join."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from modelroll.errors import Unavailable
from modelroll.live.base import Sample
from modelroll.live.memory import MemoryChannel
from modelroll.live.sample_codec import decode_sample
from router.feedback import FeedbackJoiner, parse_items
from router.records import RequestRecord, compact_prediction, encode_sample
from router.samples import Recorder


def _record(request_id: str, variant: str = "baseline", *, shadow: bool = False, keep: bool = True,
            pair: RequestRecord | None = None, status: str = "ok", logits: list[list[float]] | None = None,
            ts: float = 1000.0) -> RequestRecord:
    outputs = {"logits": np.array(logits or [[0.1, 0.9, 0.0]], dtype=np.float32)} if status == "ok" else None
    return RequestRecord("digits", variant, ts, 7, 2, request_id, 0.5, 0.9, status, 0.4, 1, shadow, outputs,
                         keep, pair)


def test_compact_prediction_is_argmax_per_row_or_integer_labels() -> None:
    assert compact_prediction({"logits": np.array([[0.1, 0.9], [2.0, 1.0]], np.float32)}) == [1, 0]
    assert compact_prediction({"probs": np.ones((2, 3), np.float32), "label": np.array([2, 1])}) == [2, 1]
    assert compact_prediction({"embedding": np.ones((2, 1), np.float32)}) is None
    assert compact_prediction(None) is None


def test_full_buffer_drops_the_oldest_and_counts_them() -> None:
    channel = MemoryChannel()
    dropped: list[int] = []
    recorder = Recorder(channel, capacity=100, flush_interval_s=10, feedback_ttl_s=60, on_drop=dropped.append)
    for i in range(130):
        recorder.add(_record(f"r{i}"))
    assert recorder.dropped == 30 and sum(dropped) == 30
    assert recorder.flush() == 100
    batch = channel.read_samples("g", "c", 1000)
    assert [s.request_id for s in batch.samples][:2] == ["r30", "r31"]
    assert all(s.kind == "request" and s.prediction == [1] and s.rollout_id == 7 for s in batch.samples)


def test_prediction_records_hold_both_sides_of_a_shadow_pair() -> None:
    channel = MemoryChannel()
    recorder = Recorder(channel, capacity=100, flush_interval_s=10, feedback_ttl_s=60)
    base = _record("p1", keep=False)
    recorder.add(base)
    recorder.add(_record("p1", "int8", shadow=True, pair=base, logits=[[0.9, 0.1, 0.0]]))
    recorder.add(_record("solo"))
    recorder.flush()
    pair = orjson.loads(channel.take_prediction("p1") or b"null")
    assert pair["predictions"] == {"baseline": [1], "int8": [0]} and pair["shadow_variant"] == "int8"
    assert pair["rollout_id"] == 7 and pair["step"] == 2 and pair["expires_at"] == 1060.0
    solo = orjson.loads(channel.take_prediction("solo") or b"null")
    assert solo["predictions"] == {"baseline": [1]} and solo["shadow_variant"] is None


def test_feedback_joins_labels_to_each_side_and_reports_each_item() -> None:
    channel = MemoryChannel()
    recorder = Recorder(channel, capacity=100, flush_interval_s=10, feedback_ttl_s=60)
    base = _record("p1", keep=False, ts=1000.0)
    recorder.add(base)
    recorder.add(_record("p1", "int8", shadow=True, pair=base, logits=[[0.9, 0.1, 0.0]], ts=1000.0))
    recorder.add(_record("p2", ts=1000.0, logits=[[1, 0, 0], [0, 0, 1]]))
    recorder.flush()
    added = []
    joiner = FeedbackJoiner(channel, added.append, clock=lambda: 1010.0)
    results = joiner.join(parse_items(orjson.dumps([
        {"request_id": "p1", "label": 1},
        {"request_id": "p2", "label": [0]},       # wrong length: invalid, record kept
        {"request_id": "p2", "label": [0, 2]},
        {"request_id": "p2", "label": [0, 2]},    # already labelled
        {"request_id": "nope", "label": 3},
        {"request_id": "p3", "label": "cat"},
        {"label": 1},
        "junk",
    ])))
    assert [r["status"] for r in results] == ["joined", "invalid", "joined", "unknown", "unknown", "invalid",
                                              "invalid", "invalid"]
    pair = [(s.variant, s.shadow, s.correct) for s in added if s.request_id == "p1"]
    assert sorted(pair) == [("baseline", False, True), ("int8", True, False)]
    rows = [s.correct for s in added if s.request_id == "p2"]
    assert rows == [True, True]
    assert all(s.kind == "feedback" and s.rollout_id == 7 and s.step == 2 for s in added)


def test_feedback_after_the_ttl_is_unknown() -> None:
    channel = MemoryChannel()
    recorder = Recorder(channel, capacity=100, flush_interval_s=10, feedback_ttl_s=60)
    recorder.add(_record("old", ts=1000.0))
    recorder.flush()
    joiner = FeedbackJoiner(channel, lambda s: None, clock=lambda: 1061.0)
    assert joiner.join([{"request_id": "old", "label": 1}])[0]["status"] == "unknown"


def test_encoded_sample_is_byte_for_byte_what_sample_to_bytes_writes() -> None:
    base = _record("p1", keep=False)
    records = [_record("ok"), _record("fail", "int8", status="error"), base,
               _record("p1", "int8", shadow=True, pair=base, logits=[[0.9, 0.1, 0.0], [0.0, 0.0, 1.0]]),
               RequestRecord("digits", "baseline", 1.5, None, None, "", 0.25, 0.5, "timeout", 0.0, 3, False, None,
                             False)]
    for r in records:
        expected = Sample(kind="request", model=r.model, variant=r.variant, ts=r.ts, rollout_id=r.rollout_id,
                          step=r.step, request_id=r.request_id, latency_ms=r.latency_ms, total_ms=r.total_ms,
                          status=r.status, cpu_ms=r.cpu_ms, batch_size=r.batch_size, shadow=r.shadow,
                          prediction=compact_prediction(r.outputs) if r.status == "ok" else None)
        assert encode_sample(r) == expected.to_bytes()
        assert decode_sample(encode_sample(r)) == expected


class _FailingAfter(MemoryChannel):
    """The in-process channel with Redis's failure mode injected: calls past the first `ok_calls` fail."""

    def __init__(self, ok_calls: int) -> None:
        super().__init__()
        self.ok_calls = ok_calls

    def append_encoded(self, samples: Sequence[bytes], predictions: Sequence[tuple[str, bytes]],
                       ttl_s: float) -> None:
        if self.ok_calls <= 0:
            raise Unavailable("Redis at redis://127.0.0.1:1/0 is unreachable (test)")
        self.ok_calls -= 1
        super().append_encoded(samples, predictions, ttl_s)


def test_a_failed_flush_resends_only_the_chunks_not_sent_and_counts_them_once() -> None:
    channel = _FailingAfter(ok_calls=1)
    recorder = Recorder(channel, capacity=10_000, flush_interval_s=10, feedback_ttl_s=60)
    for i in range(600):
        recorder.add(_record(f"r{i}"))
    with pytest.raises(Unavailable):
        recorder.flush()
    # A flush encodes and sends a chunk at a time: the first went, the second failed, the rest was not tried.
    assert recorder.degraded and recorder.sent == 256 and recorder.unsent == 256 and recorder.pending == 344
    with pytest.raises(Unavailable):
        recorder.flush()
    assert recorder.unsent == 344  # the 88 tried for the first time; the 256 again, not counted again
    with pytest.raises(Unavailable):
        recorder.flush()
    assert recorder.unsent == 344
    channel.ok_calls = 100
    recorder.add(_record("late"))
    assert recorder.flush() == 345 and not recorder.degraded and recorder.pending == 0
    ids = [s.request_id for s in channel.read_samples("g", "c", 10_000).samples]
    assert ids == [f"r{i}" for i in range(600)] + ["late"]  # each once, in order
    assert channel.take_prediction("r599") is not None and channel.take_prediction("late") is not None


def test_retry_buffers_stay_bounded_during_a_long_outage_and_count_what_they_lose() -> None:
    dropped: list[int] = []
    recorder = Recorder(_FailingAfter(ok_calls=0), capacity=100, flush_interval_s=10, feedback_ttl_s=60,
                        on_drop=dropped.append)
    for _ in range(3):
        for i in range(80):
            recorder.add(_record(f"r{i}"))
        with pytest.raises(Unavailable):
            recorder.flush()
    assert recorder.pending == 100 and recorder.dropped == sum(dropped) == 140
    assert recorder.predictions_dropped == 140 and recorder.unsent == 240


def test_metrics_hook_sees_each_request_record_once_and_its_failure_costs_no_sample() -> None:
    seen: list[str] = []
    channel = MemoryChannel()

    def hook(records: list[RequestRecord]) -> None:
        seen.extend(r.request_id for r in records)
        raise RuntimeError("a broken metric")

    recorder = Recorder(channel, capacity=100, flush_interval_s=10, feedback_ttl_s=60, on_records=hook)
    recorder.add(_record("a"))
    recorder.add(Sample(kind="memory", model="digits", variant="baseline", ts=1.0, memory_bytes=10))
    recorder.add(_record("b"))
    assert recorder.flush() == 3 and seen == ["a", "b"]
    assert [s.kind for s in channel.read_samples("g", "c", 10).samples] == ["request", "memory", "request"]


def test_settle_encodes_on_the_caller_so_the_flusher_only_sends_bytes() -> None:
    channel = MemoryChannel()
    seen: list[list[str]] = []
    recorder = Recorder(channel, capacity=3, flush_interval_s=10, feedback_ttl_s=60,
                        on_records=lambda records: seen.append([r.request_id for r in records]))
    recorder.add(_record("s1"))
    recorder.add(_record("s2"))
    recorder.settle()  # what the app does once the response is sent
    assert seen == [["s1", "s2"]] and recorder.pending == 2
    recorder.add(_record("s3"))
    recorder.add(_record("s4"))  # full: the oldest encoded one goes first
    assert recorder.dropped == 1 and recorder.pending == 3
    assert recorder.flush() == 3 and seen == [["s1", "s2"], ["s3", "s4"]]  # flush settles the rest itself
    assert [s.request_id for s in channel.read_samples("g", "c", 10).samples] == ["s2", "s3", "s4"]
    assert channel.take_prediction("s1") is None and channel.take_prediction("s2") is not None
