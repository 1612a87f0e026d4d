"""Samples → per-window rows → Observations: a pure fold plus the few queries that store and load windows.

A window holds one variant of one rollout step over `window_s` seconds; its `data` keeps the raw latencies,
memory readings and labels by request id, so every decision can be replayed from the windows alone. Memory:
exact readings under `memory_exact_bytes`, and per runner kind the readings of runners that cannot measure
(`memory_unmeasured`); the `memory_bytes` of rows written before that distinction is read by nothing, since
it may hold estimates. A router's report that it cannot serve the variant is kept as `cannot_serve` (the
newest reason, when, how many reports). In shadow steps each answer's classes are kept by request id
(`predictions`), so the shadow pairs' agreement (controller/strata.py) bounds accuracy before any label.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller import strata, window_data
from controller.observations import ArmObservations, Observations, PairedCounts
from controller.window_data import WindowData
from modelroll.db import SampleCursorRow, SampleWindowRow
from modelroll.live.base import Sample

log = logging.getLogger(__name__)

WINDOW_S = 10.0
CURSOR = "controller"


@dataclass(frozen=True, slots=True)
class Route:
    """An active rollout as the fold sees it: which variants are its arms and which step it is at."""

    rollout_id: int
    model: str
    baseline: str
    candidate: str
    step_index: int
    shadow_steps: frozenset[int] = frozenset()  # steps that mirror requests to the candidate: keep predictions


@dataclass(frozen=True, slots=True)
class WindowKey:
    rollout_id: int
    variant: str
    step_index: int
    window_start: datetime


@dataclass(slots=True)
class Window:
    """The running totals of one window (a row of sample_windows, in memory)."""

    requests: int = 0
    errors: int = 0
    shadow_requests: int = 0
    labelled: int = 0
    correct: int = 0
    latency_sum_ms: float = 0.0
    cpu_sum_ms: float = 0.0
    memory_bytes_max: int = 0
    latency_ms: list[float] = field(default_factory=list)
    memory_bytes: list[float] = field(default_factory=list)
    labels: dict[str, bool] = field(default_factory=dict)
    total_sum_ms: float = 0.0
    memory_unmeasured: dict[str, int] = field(default_factory=dict)
    cannot_serve: dict[str, Any] = field(default_factory=dict)  # {"reason", "at", "reports"} of the newest report
    predictions: dict[str, str] = field(default_factory=dict)  # request id -> classes ("3" or "3,1,7"), shadow steps

    def add(self, sample: Sample, keep_prediction: bool = False) -> None:
        if sample.kind == "request":
            self.requests += 1
            self.shadow_requests += int(sample.shadow)
            self.cpu_sum_ms += sample.cpu_ms
            if sample.status == "ok":
                self.latency_ms.append(float(sample.latency_ms))
                self.latency_sum_ms += sample.latency_ms
                self.total_sum_ms += sample.total_ms
                if keep_prediction and sample.request_id and isinstance(sample.prediction, list) and sample.prediction:
                    self.predictions[sample.request_id] = ",".join(str(v) for v in sample.prediction)
            else:
                self.errors += 1
        elif sample.kind == "memory":
            if sample.memory_exact:
                self.memory_bytes.append(float(sample.memory_bytes))
                self.memory_bytes_max = max(self.memory_bytes_max, int(sample.memory_bytes))
            else:
                self.memory_unmeasured[sample.runner] = self.memory_unmeasured.get(sample.runner, 0) + 1
        elif sample.kind == "cannot_serve":
            self.cannot_serve = _newer_report(self.cannot_serve, {"reason": sample.reason, "at": sample.ts,
                                                                  "reports": 1})
        elif sample.kind == "feedback" and sample.correct is not None:
            self.labelled += 1
            self.correct += int(bool(sample.correct))
            if sample.request_id:
                self.labels[sample.request_id] = bool(sample.correct)

    def merge_into(self, row: SampleWindowRow) -> None:
        row.requests = (row.requests or 0) + self.requests
        row.errors = (row.errors or 0) + self.errors
        row.shadow_requests = (row.shadow_requests or 0) + self.shadow_requests
        row.labelled = (row.labelled or 0) + self.labelled
        row.correct = (row.correct or 0) + self.correct
        row.latency_sum_ms = (row.latency_sum_ms or 0.0) + self.latency_sum_ms
        row.cpu_sum_ms = (row.cpu_sum_ms or 0.0) + self.cpu_sum_ms
        row.memory_bytes_max = max(row.memory_bytes_max or 0, self.memory_bytes_max)
        data = dict(row.data or {})
        data["latency_ms"] = [*data.get("latency_ms", []), *self.latency_ms]
        data["memory_exact_bytes"] = [*data.get("memory_exact_bytes", []), *self.memory_bytes]
        data["memory_unmeasured"] = _add_counts(data.get("memory_unmeasured", {}), self.memory_unmeasured)
        data["labels"] = {**data.get("labels", {}), **self.labels}
        if self.predictions:
            data["predictions"] = {**data.get("predictions", {}), **self.predictions}
        data["total_sum_ms"] = float(data.get("total_sum_ms", 0.0)) + self.total_sum_ms
        if self.cannot_serve:
            data["cannot_serve"] = _newer_report(data.get("cannot_serve", {}), self.cannot_serve)
        row.data = data  # a new dict, so the ORM sees the change


def _newer_report(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two cannot-serve reports as one (either may be {}: none): the newer one's reason and time, both counts."""
    if not a or not b:
        return dict(a or b)
    newer = b if float(b["at"]) >= float(a["at"]) else a
    return {"reason": newer["reason"], "at": newer["at"], "reports": int(a["reports"]) + int(b["reports"])}


def _cannot_serve(windows: Iterable[WindowData]) -> str:
    newest: dict[str, Any] = {}
    for w in windows:
        newest = _newer_report(newest, w.cannot_serve)
    return str(newest.get("reason", ""))


def _add_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {key: int(a.get(key, 0)) + int(b.get(key, 0)) for key in {*a, *b}}


def id_key(sample_id: str) -> tuple[int, int]:
    """Order of live-channel sample ids ("<ms>-<seq>", as Redis streams number them)."""
    ms, _, seq = sample_id.partition("-")
    return int(ms), int(seq or 0)


def fold(samples: Iterable[Sample], routes: Mapping[int, Route], by_model: Mapping[str, Route],
         window_s: float = WINDOW_S) -> tuple[dict[WindowKey, Window], int]:
    """Group samples into windows of active rollouts; returns the windows and how many samples fit none."""
    windows: dict[WindowKey, Window] = {}
    skipped = 0
    for sample in samples:
        route = routes.get(sample.rollout_id) if sample.rollout_id is not None else by_model.get(sample.model)
        if route is None or sample.variant not in (route.baseline, route.candidate):
            skipped += 1
            continue
        start = datetime.fromtimestamp(sample.ts - sample.ts % window_s, tz=UTC)
        step_index = sample.step if sample.step is not None else route.step_index
        key = WindowKey(route.rollout_id, sample.variant, step_index, start)
        # Shadow pairs need both answers: the baseline's in a shadow step, the candidate's mirrored call.
        keep = sample.shadow or (step_index in route.shadow_steps and sample.variant == route.baseline)
        windows.setdefault(key, Window()).add(sample, keep)
    return windows, skipped


def observations(windows: Sequence[SampleWindowRow | WindowData], baseline: str, candidate: str, looks: int = 1,
                 offline_memory_bytes: tuple[int | None, int | None] = (None, None),
                 carried: Mapping[str, tuple[float, float]] | None = None) -> Observations:
    """Both arms since the rollout started (cumulative over steps), from its windows in time order (rows, or the
    window cache's compact form of them: the same observations either way), with the strata of the difference
    sequences (controller/strata.py); `offline_memory_bytes` is the optimizer's (baseline, candidate) figure, shown
    beside the live one; `carried` the running intervals of the look before (controller/criterion.py)."""
    ordered = sorted((w if isinstance(w, WindowData) else WindowData.of(w) for w in windows),
                     key=lambda w: (w.window_start, w.id))

    def arm(variant: str, offline: int | None = None) -> ArmObservations:
        mine = [w for w in ordered if w.variant == variant]
        return ArmObservations(
            latency_ms=window_data.concat([w.latency_ms for w in mine]),
            requests=sum(w.requests for w in mine), errors=sum(w.errors for w in mine),
            memory_bytes=window_data.concat([w.memory_exact_bytes for w in mine]),
            labelled=sum(w.labelled for w in mine), correct=sum(w.correct for w in mine),
            offline_memory_bytes=offline,
            memory_unmeasured=functools.reduce(_add_counts, (w.memory_unmeasured for w in mine), {}),
            cannot_serve=_cannot_serve(mine),
        )

    def labels(variant: str) -> tuple[np.ndarray, np.ndarray]:
        return window_data.merged_labels([w for w in ordered if w.variant == variant])

    base_labels, cand_labels = labels(baseline), labels(candidate)
    label_blocks, request_blocks = strata.blocks(ordered, baseline, candidate)
    return Observations(baseline=arm(baseline, offline_memory_bytes[0]),
                        candidate=arm(candidate, offline_memory_bytes[1]),
                        paired=window_data.paired(base_labels, cand_labels), looks=looks,
                        agreement=strata.agreement(ordered, baseline, candidate, (base_labels, cand_labels)),
                        labels=label_blocks, requests=request_blocks, carried=dict(carried or {}))


def pair(baseline: Mapping[str, bool], candidate: Mapping[str, bool]) -> PairedCounts:
    """Shadow pairs: the labelled requests both arms answered (they share the request id)."""
    counts = {"both_correct": 0, "baseline_only": 0, "candidate_only": 0, "neither": 0}
    for request_id in baseline.keys() & candidate.keys():
        b, c = baseline[request_id], candidate[request_id]
        counts["both_correct" if b and c else "baseline_only" if b else "candidate_only" if c else "neither"] += 1
    return PairedCounts(**counts)


# --- the database side ------------------------------------------------------------------------


def read_cursor(session: Session, name: str = CURSOR) -> str | None:
    row = session.get(SampleCursorRow, name)
    return row.last_id if row is not None else None


def fresh(ids: Sequence[str], samples: Sequence[Sample], cursor: str | None) -> tuple[list[Sample], str | None]:
    """The samples after the cursor (a redelivery after a crash is skipped), and the new cursor."""
    if cursor is None:
        return list(samples), max(ids, key=id_key) if ids else None
    floor = id_key(cursor)
    kept = [s for i, s in zip(ids, samples, strict=True) if id_key(i) > floor]
    newest = max([cursor, *ids], key=id_key)
    return kept, newest


def store(session: Session, windows: Mapping[WindowKey, Window], cursor: str | None, name: str = CURSOR,
          window_s: float = WINDOW_S) -> None:
    """Merge the windows into their rows and move the cursor, in the caller's transaction."""
    for key, window in windows.items():
        row = session.scalars(select(SampleWindowRow).where(
            SampleWindowRow.rollout_id == key.rollout_id, SampleWindowRow.variant == key.variant,
            SampleWindowRow.step_index == key.step_index, SampleWindowRow.window_start == key.window_start,
        ).with_for_update()).first()
        if row is None:
            row = SampleWindowRow(rollout_id=key.rollout_id, variant=key.variant, step_index=key.step_index,
                                  window_start=key.window_start,
                                  window_end=datetime.fromtimestamp(key.window_start.timestamp() + window_s, tz=UTC),
                                  data={})
            session.add(row)
        window.merge_into(row)
    if cursor is not None:
        existing = session.get(SampleCursorRow, name)
        if existing is None:
            session.add(SampleCursorRow(name=name, last_id=cursor))
        else:
            existing.last_id = cursor


def load_windows(session: Session, rollout_id: int) -> list[SampleWindowRow]:
    return list(session.scalars(select(SampleWindowRow).where(SampleWindowRow.rollout_id == rollout_id)))


class WindowCache:
    """Each active rollout's windows between reconcile ticks: a tick reads only the windows written since the last.

    Held in their compact form (controller/window_data.py): a rollout's windows stay here for its whole life.

    Windows change only by samples merged into them (late samples can reach an old window), each write
    stamping `updated_at` with the database's clock. A read takes every window stamped since the newest
    stamp already seen, less `margin_s`: a transaction that began earlier but committed later (its stamp
    is its start) is still read when it took less than `margin_s`.
    """

    def __init__(self, margin_s: float = 60.0) -> None:
        self._margin = timedelta(seconds=margin_s)
        self._rows: dict[int, dict[int, WindowData]] = {}
        self._newest: dict[int, datetime] = {}
        self.last_read = 0  # windows the last `load` fetched from the database

    def load(self, session: Session, rollout_id: int) -> list[WindowData]:
        query = select(SampleWindowRow).where(SampleWindowRow.rollout_id == rollout_id)
        newest = self._newest.get(rollout_id)
        if newest is not None:
            query = query.where(SampleWindowRow.updated_at >= newest - self._margin)
        rows = self._rows.setdefault(rollout_id, {})
        self.last_read = 0
        for row in session.scalars(query):
            rows[row.id] = WindowData.of(row)
            newest = row.updated_at if newest is None else max(newest, row.updated_at)
            self.last_read += 1
        if newest is not None:
            self._newest[rollout_id] = newest
        return list(rows.values())

    def keep_only(self, rollout_ids: Iterable[int]) -> None:
        """Forget the rollouts no longer active (their windows are no longer read)."""
        keep = set(rollout_ids)
        for rollout_id in [r for r in self._rows if r not in keep]:
            del self._rows[rollout_id]
            self._newest.pop(rollout_id, None)


def step_counts(session: Session, rollout_id: int, step_index: int, baseline: str, candidate: str) -> tuple[int, int]:
    """Requests each arm answered in the current step (a step's minimum samples count these)."""
    rows = session.execute(select(SampleWindowRow.variant, func.sum(SampleWindowRow.requests)).where(
        SampleWindowRow.rollout_id == rollout_id, SampleWindowRow.step_index == step_index,
    ).group_by(SampleWindowRow.variant)).all()
    totals: dict[str, Any] = {variant: int(total or 0) for variant, total in rows}
    return totals.get(baseline, 0), totals.get(candidate, 0)
