"""Sample recording off the hot path: bounded buffer, batched flush, prediction records, feedback join."""

from __future__ import annotations

import numpy as np
import orjson

from modelroll.live.memory import MemoryChannel
from router.feedback import FeedbackJoiner, parse_items
from router.samples import Recorder, RequestRecord, compact_prediction


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
