"""What the hot path records per variant call, and its encoding (by the flusher) into the live channel's bytes.

A `RequestRecord` is cheap to build on the event loop; once the response is sent, `Recorder.settle`
turns it into the `Sample.to_bytes` form with one orjson call (no `Sample` object) and into the
prediction record that a feedback label is joined to later.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

_dumps = orjson.dumps
_UNSET: Any = object()


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
    """What the hot path hands over: cheap to build, encoded after the response is sent."""

    __slots__ = ("_prediction", "batch_size", "cpu_ms", "keep_prediction", "latency_ms", "model", "outputs",
                 "pair", "request_id", "rollout_id", "shadow", "status", "step", "total_ms", "ts", "variant")

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
        self._prediction = _UNSET

    def prediction(self) -> list[int] | None:
        """The compact prediction (None unless the call succeeded), computed once: sample and record share it."""
        found = self._prediction
        if found is _UNSET:
            found = self._prediction = compact_prediction(self.outputs) if self.status == "ok" else None
        return found  # type: ignore[no-any-return]


def encode_sample(r: RequestRecord) -> bytes:
    """Exactly `Sample(kind="request", ...).to_bytes()` of the record (a unit test holds them equal), without
    building the `Sample`: its frozen `__init__` alone costs more than this whole encoding."""
    return _dumps({"kind": "request", "model": r.model, "variant": r.variant, "ts": r.ts,
                   "rollout_id": r.rollout_id, "step": r.step, "request_id": r.request_id,
                   "latency_ms": r.latency_ms, "total_ms": r.total_ms, "status": r.status, "cpu_ms": r.cpu_ms,
                   "batch_size": r.batch_size, "shadow": r.shadow, "prediction": r.prediction(),
                   "memory_bytes": 0, "memory_total_bytes": 0, "correct": None, "runner": "", "memory_exact": False,
                   "reason": ""})


def encode_prediction(r: RequestRecord, ttl_s: float) -> tuple[str, bytes] | None:
    """The (request id, record) a feedback label is joined to; both sides of a shadow pair in one record."""
    if not r.keep_prediction or not r.request_id:
        return None
    base = r.pair
    if base is None:  # the common case: no shadow partner
        prediction = r.prediction()
        if prediction is None:
            return None
        return r.request_id, _dumps({"model": r.model, "rollout_id": r.rollout_id, "step": r.step,
                                     "predictions": {r.variant: prediction}, "shadow_variant": None,
                                     "expires_at": r.ts + ttl_s})
    predictions = {base.variant: base.prediction(), r.variant: r.prediction()}
    if predictions[base.variant] is None and predictions[r.variant] is None:
        return None
    if base.status != "ok":
        del predictions[base.variant]
    if r.status != "ok":
        del predictions[r.variant]
    return r.request_id, _dumps({
        "model": base.model, "rollout_id": base.rollout_id, "step": base.step, "predictions": predictions,
        "shadow_variant": r.variant if r.status == "ok" else None, "expires_at": base.ts + ttl_s,
    })
