"""What the status pages and `modelroll rollout status` show, built from database rows.

Read-only queries plus pure shaping: phase words and colours, the split, step n of m, criterion cards,
chart series per variant over time, and events as sentences.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.charts import Point
from modelroll.db import CandidateReportRow, RolloutEventRow, RolloutRow, SampleWindowRow
from modelroll.report_table import Line, stored_table_lines

log = logging.getLogger(__name__)

PHASE_WORDS = {
    "pending": "waiting to start",
    "shadow": "in shadow (mirrored, not served)",
    "progressing": "rolling out",
    "paused": "paused",
    "waiting_approval": "waiting for approval",
    "promoted": "promoted",
    "rolled_back": "rolled back",
    "aborted": "aborted",
    "failed": "failed",
}

CRITERION_TITLES = {
    "latency_p50": "Latency p50 (candidate ÷ baseline)",
    "latency_p95": "Latency p95 (candidate ÷ baseline)",
    "memory": "Memory (candidate ÷ baseline)",
    "accuracy": "Accuracy (candidate − baseline, points)",
    "errors": "Error rate (candidate − baseline, points)",
}

# Criteria whose figure must stay at or under the threshold; accuracy must stay at or above it.
UPPER_LIMIT = frozenset({"latency_p50", "latency_p95", "memory", "errors"})


def age(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 5400:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def split_text(weights: dict[str, Any], shadow: str | None = None) -> str:
    text = " / ".join(f"{name} {float(pct):g}\u00a0%" for name, pct in weights.items())  # "%" never wraps alone
    return f"{text} (+ {shadow} mirrored)" if shadow else text


@dataclass(frozen=True, slots=True)
class RolloutSummary:
    id: int
    model: str
    baseline: str
    candidate: str
    phase: str
    phase_words: str
    split: str
    step_text: str
    age: str
    why: str
    version: int
    terminal: bool


def summarize(row: RolloutRow, now: datetime) -> RolloutSummary:
    spec = row.spec or {}
    steps = spec.get("steps", [])
    state = row.state or {}
    step = steps[row.step_index] if 0 <= row.step_index < len(steps) else {}
    shadow = spec.get("candidate") if step.get("shadow") and row.phase in ("shadow", "paused", "waiting_approval") \
        and not state.get("weight_pct") and state.get("started_at") else None
    what = "shadow" if step.get("shadow") else f"{float(step.get('weight_pct', 0)):g} %"
    return RolloutSummary(
        id=row.id, model=str(spec.get("model", "")), baseline=str(spec.get("baseline", "")),
        candidate=str(spec.get("candidate", "")), phase=row.phase, phase_words=PHASE_WORDS.get(row.phase, row.phase),
        split=split_text(dict(row.weights or {}), shadow),
        step_text=f"step {row.step_index + 1} of {len(steps)} ({what})",
        age=age(row.created_at, now), why=row.last_reason or "no decision yet",
        version=row.version, terminal=row.phase in ("promoted", "rolled_back", "aborted", "failed"),
    )


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def approval_text(row: RolloutRow, now: datetime) -> str:
    """For a rollout waiting at an approval step: since when, and what happens at its timeout ("" otherwise)."""
    if row.phase != "waiting_approval":
        return ""
    steps = (row.spec or {}).get("steps", [])
    step = steps[row.step_index] if 0 <= row.step_index < len(steps) else {}
    since_text = (row.state or {}).get("waiting_since")
    since = datetime.fromisoformat(since_text) if since_text else None
    out = f"since {age(since, now)}"
    timeout_s = step.get("timeout_s")
    if timeout_s is None or since is None:
        return out + "; no timeout: it waits until someone approves, promotes or aborts"
    left = float(timeout_s) - (now - since).total_seconds()
    then = "rolls back" if step.get("on_timeout", "rollback") == "rollback" else "goes on without it"
    return out + f"; without an approval it {then} in {_duration(left)}"


def list_rollouts(session: Session, now: datetime, limit: int = 200) -> list[RolloutSummary]:
    rows = session.scalars(select(RolloutRow).order_by(RolloutRow.id.desc()).limit(limit))
    return [summarize(row, now) for row in rows]


# What a criterion's figures are, when not the routers' measurements: a badge beside its title.
SOURCE_BADGES = {"offline": "offline", "unmeasurable": "not measurable here"}


@dataclass(frozen=True, slots=True)
class CriterionCard:
    criterion: str
    title: str
    verdict: str
    message: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: float
    upper_limit: bool
    baseline_value: str
    candidate_value: str
    samples: str
    method: str
    source: str = "live"  # live | offline | unmeasurable (see CriterionResult.source)

    @property
    def badge(self) -> str:
        return SOURCE_BADGES.get(self.source, "")


def _value_text(criterion: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if criterion.startswith("latency"):
        return f"{float(value):.3f} ms"
    if criterion == "memory":
        return f"{float(value) / 2**20:.1f} MiB"
    return f"{float(value):.2%}"


def _samples_text(r: dict[str, Any], source: str) -> str:
    if source == "offline":
        return "the optimizer's figures (offline), no live readings"
    counts = f"{r.get('baseline_n', 0)} baseline, {r.get('candidate_n', 0)} candidate"
    return f"{counts} exact readings" if r.get("criterion") == "memory" else counts


def criterion_cards(results: Sequence[dict[str, Any]]) -> list[CriterionCard]:
    cards = []
    for r in results:
        name = str(r.get("criterion", ""))
        source = str(r.get("source", "live"))  # evaluations stored before the field were all live
        suffix = " (offline)" if source == "offline" else ""
        cards.append(CriterionCard(
            criterion=name, title=CRITERION_TITLES.get(name, name), verdict=str(r.get("verdict", "undecided")),
            message=str(r.get("message", "")), estimate=r.get("estimate"), ci_low=r.get("ci_low"),
            ci_high=r.get("ci_high"), threshold=float(r.get("threshold", 0.0)), upper_limit=name in UPPER_LIMIT,
            baseline_value=_value_text(name, r.get("baseline_value")) + suffix,
            candidate_value=_value_text(name, r.get("candidate_value")) + suffix,
            samples=_samples_text(r, source), method=str(r.get("method", "")), source=source,
        ))
    return cards


@dataclass(slots=True)
class Series:
    """Per-variant figures per time window, ready for the charts."""

    latency_p50_ms: dict[str, list[Point]] = field(default_factory=lambda: defaultdict(list))
    latency_p95_ms: dict[str, list[Point]] = field(default_factory=lambda: defaultdict(list))
    error_rate: dict[str, list[Point]] = field(default_factory=lambda: defaultdict(list))
    accuracy: dict[str, list[Point]] = field(default_factory=lambda: defaultdict(list))
    memory_mib: dict[str, list[Point]] = field(default_factory=lambda: defaultdict(list))  # exact readings only
    memory_unmeasured: set[str] = field(default_factory=set)  # kinds of runner that reported they cannot measure

    @property
    def memory_note(self) -> str:
        """Why the memory chart has no line: the runners that cannot measure (their estimates are never drawn)."""
        if self.memory_mib or not self.memory_unmeasured:
            return ""
        kinds = ", ".join(f"{k} runner" if k else "router of an older version" for k in sorted(self.memory_unmeasured))
        return f"not measurable here ({kinds})"


def series_from_windows(windows: Sequence[SampleWindowRow]) -> Series:
    merged: dict[tuple[str, datetime], list[SampleWindowRow]] = defaultdict(list)
    for w in windows:
        merged[(w.variant, w.window_start)].append(w)
    out = Series()
    for (variant, start), rows in sorted(merged.items(), key=lambda kv: kv[0][1]):
        latencies = np.asarray([x for r in rows for x in (r.data or {}).get("latency_ms", [])], dtype=np.float64)
        requests = sum(r.requests for r in rows)
        labelled = sum(r.labelled for r in rows)
        memory = [x for r in rows for x in (r.data or {}).get("memory_exact_bytes", [])]
        unmeasured = ((r.data or {}).get("memory_unmeasured", {}) for r in rows)
        out.memory_unmeasured.update(kind for counts in unmeasured for kind, n in counts.items() if n)
        if latencies.size:
            p50, p95 = np.percentile(latencies, [50, 95])
            out.latency_p50_ms[variant].append(Point(start, float(p50)))
            out.latency_p95_ms[variant].append(Point(start, float(p95)))
        if requests:
            out.error_rate[variant].append(Point(start, sum(r.errors for r in rows) / requests))
        if labelled:
            out.accuracy[variant].append(Point(start, sum(r.correct for r in rows) / labelled))
        if memory:
            out.memory_mib[variant].append(Point(start, max(memory) / 2**20))
    return out


@dataclass(frozen=True, slots=True)
class EventLine:
    seq: int
    at: datetime
    kind: str
    actor: str
    step_index: int
    sentence: str
    evidence: dict[str, Any]


def events(session: Session, rollout_id: int) -> list[EventLine]:
    rows = session.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == rollout_id)
                           .order_by(RolloutEventRow.seq))
    return [EventLine(seq=e.seq, at=e.ts, kind=e.kind, actor=e.actor,
                      step_index=e.step_index, sentence=_sentence(e.actor, e.reason),
                      evidence=e.evidence or {}) for e in rows]


def _sentence(actor: str, reason: str) -> str:
    if actor == "controller":
        return f"The controller {reason}." if reason else "The controller acted."
    return (reason[:1].upper() + reason[1:] + ".") if reason else f"{actor} acted."


def step_markers(lines: Sequence[EventLine]) -> list[tuple[datetime, str]]:
    return [(e.at, f"step {e.step_index + 1}" if e.kind in ("started", "advanced") else e.kind.replace("_", " "))
            for e in lines if e.kind in ("started", "advanced", "weight_set", "resumed", "approved", "promoted",
                                         "rolled_back")]


def timeline(spec: dict[str, Any], step_index: int, phase: str) -> list[dict[str, str]]:
    """The steps with their state: done, current or to come."""
    out = []
    finished = phase in ("promoted",)
    for index, step in enumerate(spec.get("steps", [])):
        label = "shadow" if step.get("shadow") else f"{float(step.get('weight_pct', 0)):g} %"
        if step.get("approval"):
            label += " · approval"
        if finished or index < step_index:
            status = "done"
        elif index == step_index:
            status = "current"
        else:
            status = "todo"
        out.append({"label": label, "status": status, "index": str(index + 1)})
    return out


def report_lines(report: CandidateReportRow | None) -> list[Line]:
    """The optimizer's table for the candidate: the lines its Markdown and terminal reports print."""
    if report is None:
        return []
    try:
        return stored_table_lines(report.baseline_figures, report.candidate_figures, report.gates or {})
    except (KeyError, TypeError, ValueError) as exc:  # a row of another figures schema: say so, keep the page
        log.warning("candidate_report=%s figures unreadable: %r", report.id, exc)
        return []
