"""A sample window as the statistics read it, compact: the same values as its row, in numpy arrays.

A stored window's JSON `data` decodes into a Python float per latency and a str → bool dict entry per label
(~30 and ~120 bytes each); kept for a rollout's whole life between reconcile ticks, that grew the controller by
every request it saw. Here a latency or memory reading costs 8 bytes and a label its id's UTF-8 bytes plus 2,
and the arms and shadow pairs are built with array operations that give exactly what the rows give.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from controller.observations import PairedCounts
from modelroll.db import SampleWindowRow

# Ends every encoded label id. UTF-8 never holds the byte 0xFF, so an id ends at its first 0xFF: no id is a prefix of
# another, and numpy's trailing-NUL padding of fixed-width bytes (arrays of unequal widths meeting) never changes one.
_END = b"\xff"
_NO_IDS = np.empty(0, dtype="S1")
_NO_VALUES = np.empty(0, dtype=np.float64)
_NO_FLAGS = np.empty(0, dtype=np.bool_)


@dataclass(frozen=True, slots=True, eq=False)
class WindowData:
    """One row of `sample_windows` reduced to what `aggregate.observations` reads, in the row's own order."""

    id: int
    variant: str
    window_start: datetime
    requests: int
    errors: int
    labelled: int
    correct: int
    latency_ms: np.ndarray  # float64, the row's `latency_ms` in order
    memory_exact_bytes: np.ndarray  # float64, the row's `memory_exact_bytes` in order
    memory_unmeasured: Mapping[str, int]
    cannot_serve: Mapping[str, Any]
    label_ids: np.ndarray  # bytes: each labelled request id as UTF-8 + 0xFF, in the row's order
    label_correct: np.ndarray  # bool, beside label_ids
    # Shadow steps: each answered request's id and its prediction (the classes of its rows, as "3" or "3,1,7"),
    # for the shadow pairs' agreement; rows written before predictions were kept have none.
    prediction_ids: np.ndarray = field(default_factory=lambda: _NO_IDS)
    predictions: np.ndarray = field(default_factory=lambda: _NO_IDS)

    @classmethod
    def of(cls, row: SampleWindowRow) -> WindowData:
        data = row.data or {}
        labels: Mapping[str, Any] = data.get("labels") or {}
        predictions: Mapping[str, Any] = data.get("predictions") or {}
        return cls(
            id=row.id or 0, variant=row.variant, window_start=row.window_start,
            requests=row.requests or 0, errors=row.errors or 0, labelled=row.labelled or 0, correct=row.correct or 0,
            latency_ms=_floats(data.get("latency_ms")), memory_exact_bytes=_floats(data.get("memory_exact_bytes")),
            memory_unmeasured=dict(data.get("memory_unmeasured") or {}),
            cannot_serve=dict(data.get("cannot_serve") or {}),
            label_ids=encode_ids(labels) if labels else _NO_IDS,
            label_correct=np.fromiter((bool(v) for v in labels.values()), dtype=np.bool_, count=len(labels))
            if labels else _NO_FLAGS,
            prediction_ids=encode_ids(predictions) if predictions else _NO_IDS,
            predictions=np.array([str(v).encode() for v in predictions.values()], dtype=np.bytes_)
            if predictions else _NO_IDS,
        )

    @property
    def nbytes(self) -> int:
        """Bytes its arrays hold (what the window costs beyond a fixed ~1 KiB of objects)."""
        return sum(a.nbytes for a in (self.latency_ms, self.memory_exact_bytes, self.label_ids, self.label_correct,
                                      self.prediction_ids, self.predictions))


def encode_ids(ids: Iterable[str]) -> np.ndarray:
    """Request ids as fixed-width bytes that compare equal exactly when the ids do (surrogates kept as they are)."""
    return np.array([i.encode("utf-8", "surrogatepass") + _END for i in ids], dtype=np.bytes_)


def _floats(values: Sequence[Any] | None) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) if values else _NO_VALUES


def concat(arrays: Sequence[np.ndarray], empty: np.ndarray = _NO_VALUES) -> np.ndarray:
    return np.concatenate(arrays) if arrays else empty


def merged_labels(windows: Sequence[WindowData]) -> tuple[np.ndarray, np.ndarray]:
    """Each labelled request id once (sorted) with its label, a later window's label replacing an earlier one's:
    what `dict.update` over the windows' label dicts, in this order, gives."""
    ids = concat([w.label_ids for w in windows], _NO_IDS)
    if ids.size == 0:
        return _NO_IDS, _NO_FLAGS
    correct = concat([w.label_correct for w in windows], _NO_FLAGS)
    unique, first = np.unique(ids[::-1], return_index=True)  # the first in reverse is the last written
    return unique, correct[::-1][first]


def paired(baseline: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> PairedCounts:
    """Shadow pairs: the request ids both arms have a label for (`merged_labels` of each arm)."""
    (b_ids, b_correct), (c_ids, c_correct) = baseline, candidate
    if b_ids.size == 0 or c_ids.size == 0:
        return PairedCounts()
    _, b_at, c_at = np.intersect1d(b_ids, c_ids, assume_unique=True, return_indices=True)
    b, c = b_correct[b_at], c_correct[c_at]
    return PairedCounts(both_correct=int(np.count_nonzero(b & c)), baseline_only=int(np.count_nonzero(b & ~c)),
                        candidate_only=int(np.count_nonzero(~b & c)), neither=int(np.count_nonzero(~b & ~c)))
