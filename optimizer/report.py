"""The research report's table per candidate (metric | original | optimized | improvement), its gates, and renderings.

Gates are judged here, purely, from two `Figures` and the job's `Criteria`; JSON, Markdown and rich
tables are three views of the same `JobReport`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from modelroll.types import Criteria, criteria_from_dict, criteria_to_dict
from optimizer.figures import Figures, LatencyFigures


@dataclass(frozen=True, slots=True)
class Gate:
    """One gate's verdict: `value` compared with `threshold` (value <= threshold passes)."""

    name: str
    passed: bool
    value: float
    threshold: float
    message: str


@dataclass(frozen=True, slots=True)
class Line:
    metric: str
    original: str
    optimized: str
    improvement: str
    gate: str = ""


@dataclass(frozen=True, slots=True)
class CandidateReport:
    name: str
    recipe: Mapping[str, Any]
    status: str  # measured | failed
    baseline: Figures
    candidate: Figures | None
    gates: tuple[Gate, ...] = ()
    error: str = ""
    variant: str | None = None
    tries: tuple[Mapping[str, Any], ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "measured" and bool(self.gates) and all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "variant": self.variant, "recipe": dict(self.recipe), "status": self.status,
            "error": self.error, "passed": self.passed,
            "baseline": self.baseline.to_dict(),
            "candidate": self.candidate.to_dict() if self.candidate else None,
            "gates": {g.name: {"passed": g.passed, "value": g.value, "threshold": g.threshold,
                               "message": g.message} for g in self.gates},
            "table": [vars_of(line) for line in lines(self)],
            "tries": [dict(t) for t in self.tries],
        }


@dataclass(frozen=True, slots=True)
class JobReport:
    job_id: int
    model: str
    baseline: str
    criteria: Criteria
    status: str
    candidates: tuple[CandidateReport, ...] = field(default=())
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "model": self.model, "baseline": self.baseline, "status": self.status,
            "error": self.error, "criteria": criteria_to_dict(self.criteria),
            "passed": [c.name for c in self.candidates if c.passed],
            "candidates": [c.to_dict() for c in self.candidates],
        }


def vars_of(line: Line) -> dict[str, str]:
    return {"metric": line.metric, "original": line.original, "optimized": line.optimized,
            "improvement": line.improvement, "gate": line.gate}


def _ratio_gate(name: str, what: str, base: float, cand: float, ratio_max: float) -> Gate:
    if base <= 0:
        return Gate(name, False, float("nan"), ratio_max,
                    f"{what}: the baseline's figure is {base}, so no ratio can be formed")
    ratio = cand / base
    passed = ratio <= ratio_max
    verdict = "<=" if passed else ">"
    return Gate(name, passed, ratio, ratio_max,
                f"{what}: candidate/baseline {ratio:.3f} {verdict} {ratio_max:.3f} "
                f"({1 - ratio:.1%} lower, needed {1 - ratio_max:.0%})")


def evaluate_gates(baseline: Figures, candidate: Figures, criteria: Criteria) -> tuple[Gate, ...]:
    """Latency p50/p95 and memory at every batch size both measured, then accuracy (drop in points)."""
    gates: list[Gate] = []
    for base_lat in baseline.latency:
        b = base_lat.batch_size
        cand_lat = candidate.latency_at(b)
        if cand_lat is None:
            continue
        gates.append(_ratio_gate(f"latency_p50_b{b}", f"latency p50 at batch {b}",
                                 base_lat.p50_ms, cand_lat.p50_ms, criteria.latency_ratio_max))
        gates.append(_ratio_gate(f"latency_p95_b{b}", f"latency p95 at batch {b}",
                                 base_lat.p95_ms, cand_lat.p95_ms, criteria.latency_ratio_max))
    for base_mem in baseline.memory:
        cand_mem = candidate.memory_at(base_mem.batch_size)
        if cand_mem is None:
            continue
        b = base_mem.batch_size
        gates.append(_ratio_gate(f"memory_b{b}", f"memory at batch {b}",
                                 base_mem.memory_bytes, cand_mem.memory_bytes, criteria.memory_ratio_max))
    if baseline.quality is not None and candidate.quality is not None:
        metric = candidate.quality.metric
        base_value = getattr(baseline.quality, metric)
        drop = (base_value if base_value is not None else 1.0) - candidate.quality.value
        passed = drop <= criteria.accuracy_drop_max + 1e-12
        gates.append(Gate("accuracy", passed, drop, criteria.accuracy_drop_max,
                          f"{metric}: drop of {drop * 100:.2f} points {'<=' if passed else '>'} "
                          f"{criteria.accuracy_drop_max * 100:.2f} allowed"))
    return tuple(gates)


def fmt_bytes(value: float) -> str:
    return f"{value / 2**20:.1f} MiB" if abs(value) >= 2**20 else f"{value / 1024:.0f} KiB"


def fmt_ms(value: float) -> str:
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def lower_is_better(base: float, cand: float) -> str:
    if base <= 0:
        return "n/a"
    ratio = cand / base
    word = "lower" if ratio <= 1 else "higher"
    return f"{abs(1 - ratio):.1%} {word} ({ratio:.2f}×)"


def _share(latency: LatencyFigures, threads: int) -> float:
    """CPU time over the wall time the threads could have used: ~1 on a quiet machine."""
    return latency.cpu_ms / (latency.mean_ms * threads) if latency.mean_ms > 0 else 0.0


def _gate_text(gates: Mapping[str, Gate], name: str) -> str:
    gate = gates.get(name)
    if gate is None:
        return ""
    return f"{'pass' if gate.passed else 'FAIL'} (≤ {gate.threshold:.2f})"


def lines(report: CandidateReport) -> list[Line]:
    """The table rows for one candidate; a failed candidate has none (its error says why)."""
    base, cand = report.baseline, report.candidate
    if cand is None:
        return []
    gates = {g.name: g for g in report.gates}
    out = [Line("size on disk", fmt_bytes(base.size_bytes), fmt_bytes(cand.size_bytes),
                lower_is_better(base.size_bytes, cand.size_bytes).replace("lower", "smaller"))]
    for bl in base.latency:
        cl = cand.latency_at(bl.batch_size)
        if cl is None:
            continue
        b = bl.batch_size
        for label, bv, cv, gate in (("p50", bl.p50_ms, cl.p50_ms, f"latency_p50_b{b}"),
                                    ("p95", bl.p95_ms, cl.p95_ms, f"latency_p95_b{b}"),
                                    ("p99", bl.p99_ms, cl.p99_ms, "")):
            out.append(Line(f"latency {label}, batch {b}", fmt_ms(bv), fmt_ms(cv), lower_is_better(bv, cv),
                            _gate_text(gates, gate)))
        out.append(Line(f"CPU per request, batch {b}", fmt_ms(bl.cpu_ms), fmt_ms(cl.cpu_ms),
                        lower_is_better(bl.cpu_ms, cl.cpu_ms)))
        # The model's threads should own their CPUs while timed; much less means other processes competed.
        shares = _share(bl, base.threads), _share(cl, cand.threads)
        out.append(Line(f"CPU share while timed, batch {b}", f"{shares[0]:.0%}", f"{shares[1]:.0%}",
                        "below 90%: a busy machine inflated latency" if min(shares) < 0.9 else ""))
    for bm in base.memory:
        cm = cand.memory_at(bm.batch_size)
        if cm is None:
            continue
        b = bm.batch_size
        out.append(Line(f"memory (model), batch {b}", fmt_bytes(bm.memory_bytes), fmt_bytes(cm.memory_bytes),
                        lower_is_better(bm.memory_bytes, cm.memory_bytes), _gate_text(gates, f"memory_b{b}")))
        out.append(Line(f"memory (process peak), batch {b}", fmt_bytes(bm.memory_total_bytes),
                        fmt_bytes(cm.memory_total_bytes),
                        lower_is_better(bm.memory_total_bytes, cm.memory_total_bytes)))
    out.append(Line("runtime memory before load", fmt_bytes(base.runtime_bytes), fmt_bytes(cand.runtime_bytes),
                    "same runtime, not the model's cost"))
    if base.quality is not None and cand.quality is not None:
        for metric in ("accuracy", "top1_agreement", "cosine_mean", "nn_agreement"):
            bv, cv = getattr(base.quality, metric), getattr(cand.quality, metric)
            if bv is None or cv is None:
                continue
            label = metric.replace("_", " ") + ("" if metric == "accuracy" else " with baseline")
            is_gate = metric == cand.quality.metric
            spec = ".4f" if metric == "cosine_mean" else ".2%"
            out.append(Line(label, format(bv, spec), format(cv, spec), f"{(cv - bv) * 100:+.2f} points",
                            _accuracy_gate_text(gates) if is_gate else ""))
    return out


def _accuracy_gate_text(gates: Mapping[str, Gate]) -> str:
    gate = gates.get("accuracy")
    if gate is None:
        return ""
    return f"{'pass' if gate.passed else 'FAIL'} (drop ≤ {gate.threshold * 100:.1f} points)"


def recipe_text(recipe: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in recipe.items() if k not in ("artifact_sha256", "job_id")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) if shown else "-"


def _verdict(candidate: CandidateReport) -> str:
    if candidate.status != "measured":
        return f"FAILED: {candidate.error}"
    return "passes every gate" if candidate.passed else "fails: " + ", ".join(
        g.name for g in candidate.gates if not g.passed)


def to_markdown(report: JobReport) -> str:
    out = [f"# Optimization job {report.job_id}: model `{report.model}`, baseline `{report.baseline}`", "",
           f"Status: **{report.status}**" + (f" — {report.error}" if report.error else ""), ""]
    for cand in report.candidates:
        out += [f"## {cand.name}" + (f" (variant `{cand.variant}`)" if cand.variant else ""), "",
                f"Recipe: `{recipe_text(cand.recipe)}`  ", f"Verdict: **{_verdict(cand)}**", ""]
        rows = lines(cand)
        if rows:
            out += ["| metric | original | optimized | improvement | gate |", "|---|---|---|---|---|"]
            out += [f"| {r.metric} | {r.original} | {r.optimized} | {r.improvement} | {r.gate} |" for r in rows]
            out.append("")
    return "\n".join(out)


def to_rich(report: JobReport) -> list[Table]:
    tables = []
    for cand in report.candidates:
        title = f"{report.model}: {cand.name} vs {report.baseline} — {_verdict(cand)}"
        table = Table(title=title, caption=f"recipe: {recipe_text(cand.recipe)}")
        for column in ("metric", "original", "optimized", "improvement", "gate"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for r in lines(cand):
            style = "red" if r.gate.startswith("FAIL") else ("green" if r.gate.startswith("pass") else None)
            table.add_row(r.metric, r.original, r.optimized, r.improvement, r.gate, style=style)
        tables.append(table)
    return tables


def candidate_from_dict(data: Mapping[str, Any]) -> CandidateReport:
    gates = tuple(Gate(name, bool(g["passed"]), float(g["value"]), float(g["threshold"]), str(g["message"]))
                  for name, g in (data.get("gates") or {}).items())
    cand = data.get("candidate")
    return CandidateReport(
        name=data["name"], recipe=data.get("recipe") or {}, status=data["status"],
        baseline=Figures.from_dict(data["baseline"]), candidate=Figures.from_dict(cand) if cand else None,
        gates=gates, error=data.get("error") or "", variant=data.get("variant"),
        tries=tuple(data.get("tries") or ()),
    )


def job_report_from_dict(data: Mapping[str, Any]) -> JobReport:
    return JobReport(
        job_id=int(data["job_id"]), model=data["model"], baseline=data["baseline"],
        criteria=criteria_from_dict(data.get("criteria") or {}), status=data["status"],
        candidates=tuple(candidate_from_dict(c) for c in data.get("candidates") or ()),
        error=data.get("error") or "",
    )


def summary(candidates: Sequence[CandidateReport]) -> CandidateReport | None:
    """The candidate to roll out: passes every gate, then the lowest batch-1 p50 latency."""
    passing = [c for c in candidates if c.passed and c.candidate is not None]
    if not passing:
        return None
    return min(passing, key=lambda c: c.candidate.latency[0].p50_ms if c.candidate else float("inf"))
