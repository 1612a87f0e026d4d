"""The research report per candidate: its gates, and JSON, Markdown and rich views of the same `JobReport`.

Gates are judged here, purely, from two `Figures` and the job's `Criteria`; the table's lines come from
`modelroll.report_table`, which the controller's status page renders too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from modelroll.figures import Figures
from modelroll.report_table import Gate, Line, gates_from_dict, gates_to_dict, table_lines
from modelroll.types import Criteria, criteria_from_dict, criteria_to_dict


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
            "gates": gates_to_dict(self.gates),
            "table": [line.to_dict() for line in lines(self)],
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


def lines(report: CandidateReport) -> list[Line]:
    """The table rows for one candidate; a failed candidate has none (its error says why)."""
    return table_lines(report.baseline, report.candidate, report.gates)


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
    gates = gates_from_dict(data.get("gates") or {})
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
