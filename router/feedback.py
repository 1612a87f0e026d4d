"""Label feedback: join `{request_id, label}` items with the stored predictions into correctness samples.

A label is a class index (int) or one per batch row (list of ints). Each row of each variant
that answered (both sides of a shadow pair) yields one feedback sample. Results are per item:
joined, unknown (never seen, expired or already labelled) or invalid (with the reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from modelroll.errors import InvalidInput
from modelroll.live.base import LiveChannel, Sample

MAX_ITEMS = 1000


def parse_items(body: bytes) -> list[Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"feedback body is not valid JSON ({exc}); send {{\"request_id\": ..., \"label\": ...}} "
                           "or a list of them") from None
    items = data if isinstance(data, list) else [data] if isinstance(data, dict) else None
    if items is None:
        raise InvalidInput(f"feedback must be an object {{request_id, label}} or a list of them, "
                           f"got {type(data).__name__}")
    if not items:
        raise InvalidInput("feedback list is empty; send at least one {request_id, label}")
    if len(items) > MAX_ITEMS:
        raise InvalidInput(f"feedback holds {len(items)} items; send at most {MAX_ITEMS} per request")
    return items


def _label_rows(label: Any) -> list[int] | None:
    if type(label) is int:
        return [label]
    if isinstance(label, list) and label and all(type(x) is int for x in label):
        return list(label)
    return None


class FeedbackJoiner:
    def __init__(self, channel: LiveChannel, add_sample: Callable[[Sample], None],
                 clock: Callable[[], float] = time.time) -> None:
        self._channel = channel
        self._add = add_sample
        self._clock = clock

    def join(self, items: list[Any]) -> list[dict[str, Any]]:
        """Blocking (live-channel reads): call it from a worker thread."""
        return [self._one(item) for item in items]

    def _one(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict):
            return {"request_id": None, "status": "invalid",
                    "error": f"each item must be an object {{request_id, label}}, got {type(item).__name__}"}
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            return {"request_id": request_id, "status": "invalid", "error": "request_id must be a non-empty string"}
        rows = _label_rows(item.get("label"))
        if rows is None:
            return {"request_id": request_id, "status": "invalid",
                    "error": f"label must be an integer class index or a non-empty list of integers (one per "
                             f"batch row), got {item.get('label')!r}"}
        raw = self._channel.take_prediction(request_id)
        now = self._clock()
        record = orjson.loads(raw) if raw is not None else None
        if record is None or record.get("expires_at", now + 1) <= now:
            return {"request_id": request_id, "status": "unknown",
                    "error": "no prediction stored for this request id: unknown, expired or already labelled"}
        predictions: dict[str, list[int] | None] = record["predictions"]
        sizes = {len(p) for p in predictions.values() if p is not None}
        if sizes != {len(rows)}:
            self._put_back(request_id, raw, record, now)
            return {"request_id": request_id, "status": "invalid",
                    "error": f"label has {len(rows)} value(s), the request had {sorted(sizes)} row(s)"}
        shadow_variant = record.get("shadow_variant")
        for variant, predicted in predictions.items():
            if predicted is None:
                continue
            for got, want in zip(predicted, rows, strict=True):
                self._add(Sample(kind="feedback", model=record["model"], variant=variant, ts=now,
                                 rollout_id=record.get("rollout_id"), step=record.get("step"),
                                 request_id=request_id, shadow=variant == shadow_variant, correct=got == want,
                                 batch_size=len(rows)))
        return {"request_id": request_id, "status": "joined", "variants": sorted(predictions)}

    def _put_back(self, request_id: str, raw: bytes | None, record: dict[str, Any], now: float) -> None:
        remaining = record.get("expires_at", now) - now
        if raw is not None and remaining > 0:
            self._channel.put_prediction(request_id, raw, remaining)
