"""Decoding of stored samples in bulk, for the controller's read path (a batch of 1,000 per read).

A frozen dataclass's `__init__` costs more than the JSON parse, so samples of this version are built
field by field; anything else goes through the checked `Sample.from_bytes`.
"""

from __future__ import annotations

from typing import Any

import orjson

from modelroll.live.base import Sample

_SAMPLE_FIELDS = frozenset(Sample.__dataclass_fields__)
_set = object.__setattr__


def _build(data: Any) -> Sample | None:
    if not isinstance(data, dict) or data.keys() != _SAMPLE_FIELDS:
        return None
    sample = object.__new__(Sample)
    for name, value in data.items():
        _set(sample, name, value)
    return sample


def decode_sample(raw: bytes) -> Sample:
    """`Sample.from_bytes`, three times faster for samples written by this version."""
    sample = _build(orjson.loads(raw))
    return sample if sample is not None else Sample.from_bytes(raw)  # older writer: checked, with defaults


def decode_samples(payloads: list[bytes]) -> list[Sample] | None:
    """Every payload with one JSON parse, or None when any one is not a sample of this version."""
    try:
        rows = orjson.loads(b"[" + b",".join(payloads) + b"]")
    except orjson.JSONDecodeError:
        return None
    samples = [sample for sample in map(_build, rows) if sample is not None]
    return samples if len(samples) == len(rows) == len(payloads) else None
