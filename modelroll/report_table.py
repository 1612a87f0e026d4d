"""The research report's table (metric | original | optimized | improvement | gate) from two `Figures` and their gates.

One set of lines for every view: the optimizer's Markdown and terminal reports and the controller's status page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelroll.figures import QUALITY_METRICS, Figures, LatencyFigures


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
    """One row; `verdict` is the gate that judges the row's figure (None for rows shown beside the gates)."""

    metric: str
    original: str
    optimized: str
    improvement: str
    gate: str = ""
    verdict: Gate | None = None

    def to_dict(self) -> dict[str, str]:
        return {"metric": self.metric, "original": self.original, "optimized": self.optimized,
                "improvement": self.improvement, "gate": self.gate}


def gates_to_dict(gates: Iterable[Gate]) -> dict[str, dict[str, Any]]:
    """Gates as stored (CandidateReportRow.gates): name -> {passed, value, threshold, message}."""
    return {g.name: {"passed": g.passed, "value": g.value, "threshold": g.threshold, "message": g.message}
            for g in gates}


def gates_from_dict(data: Mapping[str, Mapping[str, Any]]) -> tuple[Gate, ...]:
    return tuple(Gate(name, bool(g["passed"]), float(g["value"]), float(g["threshold"]), str(g["message"]))
                 for name, g in data.items())


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


def share_note(original: float, optimized: float) -> str:
    """What the CPU shares say about the timings, naming the side it concerns (empty when both look normal)."""
    notes = []
    busy = [side for side, share in (("original", original), ("optimized", optimized)) if share < 0.9]
    if busy:
        notes.append(f"{' and '.join(busy)} below 90%: a busy machine inflated {'its' if len(busy) == 1 else 'their'}"
                     " latency")
    extra = [side for side, share in (("original", original), ("optimized", optimized)) if share > 1.1]
    if extra:
        notes.append(f"{' and '.join(extra)} above 100%: the runtime used more threads than the ones set")
    return "; ".join(notes)


def _ratio_gate_text(gate: Gate | None) -> str:
    return "" if gate is None else f"{'pass' if gate.passed else 'FAIL'} (≤ {gate.threshold:.2f})"


def _accuracy_gate_text(gate: Gate | None) -> str:
    return "" if gate is None else f"{'pass' if gate.passed else 'FAIL'} (drop ≤ {gate.threshold * 100:.1f} points)"


def table_lines(baseline: Figures, candidate: Figures | None, gates: Iterable[Gate]) -> list[Line]:
    """The rows for one candidate; a candidate that was not measured has none (its error says why)."""
    base, cand = baseline, candidate
    if cand is None:
        return []
    by_name = {g.name: g for g in gates}
    same_runtime = base.runtime_label.split(" ")[0] == cand.runtime_label.split(" ")[0]
    out = [Line("runtime", base.runtime_label, cand.runtime_label, "" if same_runtime else "runtime changed"),
           Line("size on disk", fmt_bytes(base.size_bytes), fmt_bytes(cand.size_bytes),
                lower_is_better(base.size_bytes, cand.size_bytes).replace("lower", "smaller"))]
    for bl in base.latency:
        cl = cand.latency_at(bl.batch_size)
        if cl is None:
            continue
        b = bl.batch_size
        for label, bv, cv in (("p50", bl.p50_ms, cl.p50_ms), ("p95", bl.p95_ms, cl.p95_ms),
                              ("p99", bl.p99_ms, cl.p99_ms)):
            gate = by_name.get(f"latency_{label}_b{b}")
            out.append(Line(f"latency {label}, batch {b}", fmt_ms(bv), fmt_ms(cv), lower_is_better(bv, cv),
                            _ratio_gate_text(gate), gate))
        out.append(Line(f"CPU per request, batch {b}", fmt_ms(bl.cpu_ms), fmt_ms(cl.cpu_ms),
                        lower_is_better(bl.cpu_ms, cl.cpu_ms)))
        # The model's threads should own their CPUs while timed; much less means other processes competed.
        shares = _share(bl, base.threads), _share(cl, cand.threads)
        out.append(Line(f"CPU share while timed, batch {b}", f"{shares[0]:.0%}", f"{shares[1]:.0%}",
                        share_note(*shares)))
    for bm in base.memory:
        cm = cand.memory_at(bm.batch_size)
        if cm is None:
            continue
        b = bm.batch_size
        gate = by_name.get(f"memory_b{b}")
        out.append(Line(f"memory (model), batch {b}", fmt_bytes(bm.memory_bytes), fmt_bytes(cm.memory_bytes),
                        lower_is_better(bm.memory_bytes, cm.memory_bytes), _ratio_gate_text(gate), gate))
        out.append(Line(f"memory (process peak), batch {b}", fmt_bytes(bm.memory_total_bytes),
                        fmt_bytes(cm.memory_total_bytes),
                        lower_is_better(bm.memory_total_bytes, cm.memory_total_bytes)))
    out.append(Line("runtime memory before load", fmt_bytes(base.runtime_bytes), fmt_bytes(cand.runtime_bytes),
                    "same runtime, not the model's cost" if same_runtime
                    else "each runtime's fixed cost, not the model's"))
    if base.quality is not None and cand.quality is not None:
        for metric in QUALITY_METRICS:
            bv, cv = getattr(base.quality, metric), getattr(cand.quality, metric)
            if bv is None or cv is None:
                continue
            label = metric.replace("_", " ") + ("" if metric == "accuracy" else " with baseline")
            gate = by_name.get("accuracy") if metric == cand.quality.metric else None
            spec = ".4f" if metric == "cosine_mean" else ".2%"
            out.append(Line(label, format(bv, spec), format(cv, spec), f"{(cv - bv) * 100:+.2f} points",
                            _accuracy_gate_text(gate), gate))
    return out


def stored_table_lines(baseline: Mapping[str, Any], candidate: Mapping[str, Any] | None,
                       gates: Mapping[str, Mapping[str, Any]]) -> list[Line]:
    """The rows from the JSON the worker stores (CandidateReportRow); no candidate figures, no rows."""
    if not candidate:
        return []
    return table_lines(Figures.from_dict(baseline), Figures.from_dict(candidate), gates_from_dict(gates))
