"""Optimizer benchmark: FP32 onnxruntime vs plain `quantize_dynamic` INT8 vs modelroll's candidates,
for the digits MLP and all-MiniLM-L6-v2, measured side by side in one run by the one evaluator.

Each variant is measured in a fresh process (1 thread, batch 1 and 32), in interleaved rounds whose
medians are reported, so that a busy machine slows every variant alike. Prints per model the figures,
their ratios to FP32 and to plain dynamic INT8, and a met/missed line per target.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizer.baselines import builtin_source, eval_arrays  # noqa: E402
from optimizer.evaluate import EvalConfig, EvalSet, evaluate, measure_quality  # noqa: E402
from optimizer.figures import Figures  # noqa: E402
from optimizer.recipes import GOOD_RECIPE, MINILM_RECIPE, search  # noqa: E402
from optimizer.sources import ModelSource  # noqa: E402

COMMAND = ".venv/bin/python bench/optimize.py"
RECIPES = {
    "digits": ("int8", GOOD_RECIPE, "int8-static"),
    # Torch recipes on the encoder cost minutes per try (distillation): one, with a bounded distillation.
    "minilm-l6": ("int8:per_channel", MINILM_RECIPE, "drop-layers:0.17,distill:seconds=60,int8:per_channel"),
}
MAX_TRIES = 2
QUALITY_BUDGET = {"digits": 0.02, "minilm-l6": 0.01}  # research gate (2 points); MiniLM target (1 point)
CONFIG = EvalConfig(batch_sizes=(1, 32), threads=1, warmup_runs=5, min_runs=20, max_runs=2000, max_time_s=4.0,
                    check_every=10, timeout_s=900)
console = Console(width=200)


@dataclass
class Row:
    label: str
    path: Path
    recipe: str = ""
    rounds: list[Figures] | None = None

    def median(self, pick: str, batch: int) -> float:
        assert self.rounds
        values = []
        for figures in self.rounds:
            if pick in ("p50_ms", "p95_ms", "cpu_ms"):
                values.append(getattr(figures.latency_at(batch), pick))
            else:
                values.append(float(getattr(figures.memory_at(batch), pick)))
        return float(statistics.median(values))

    @property
    def first(self) -> Figures:
        assert self.rounds
        return self.rounds[0]

    def quality(self, metric: str) -> float:
        assert self.first.quality is not None
        return float(getattr(self.first.quality, metric))


def plain_dynamic_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(str(src), str(dst))  # the defaults, as a user would call it
    return dst


def build_candidates(name: str, source: ModelSource, eval_set: EvalSet, reference: np.ndarray, base_quality: float,
                     work: Path, recipes: tuple[str, ...]) -> list[Row]:
    rows: list[Row] = []
    quality_config = replace(CONFIG, batch_sizes=(1,))

    def quality(path: Path) -> float:
        return measure_quality(path, eval_set, quality_config, reference=reference).value

    for index, recipe in enumerate(recipes):
        started = time.monotonic()
        try:
            found = search(recipe, source, work / f"{name}-{index}", quality, baseline_quality=base_quality,
                           max_quality_drop=QUALITY_BUDGET[name], max_tries=MAX_TRIES)
        except Exception as exc:  # a recipe that cannot be built is reported, the bench goes on
            console.print(f"  {recipe}: could not build: {type(exc).__name__}: {exc}")
            continue
        chosen = found.best or max(found.tries, key=lambda t: t.quality)
        console.print(f"  built {recipe!r} → {chosen.recipe!r} in {time.monotonic() - started:.0f} s "
                      f"({len(found.tries)} tr{'y' if len(found.tries) == 1 else 'ies'})")
        if any(row.recipe == chosen.recipe for row in rows):
            console.print(f"  ({chosen.recipe!r} is already in the table: not measured twice)")
            continue
        rows.append(Row(f"modelroll {chosen.recipe}", chosen.onnx_path, chosen.recipe))
    return rows


def measure(rows: list[Row], eval_set: EvalSet, rounds: int) -> None:
    reference = None
    for row in rows:
        row.rounds = []
    for index in range(rounds):
        for row in rows:
            result = evaluate(row.path, eval_set, CONFIG, reference=reference, label=row.label)
            if not result.ok or result.figures is None:
                raise SystemExit(f"measuring {row.label} failed: {result.error}")
            if reference is None:
                reference = result.outputs
            assert row.rounds is not None
            row.rounds.append(result.figures)
        console.print(f"  round {index + 1}/{rounds} measured")


def load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def fmt_ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


Cell = Callable[[Row], list[str]]


def table(title: str, rows: list[Row], metrics: tuple[str, ...], cell: Cell) -> Table:
    out = Table(title=title, title_justify="left")
    out.add_column("variant")
    for column in ("p50 b1", "p95 b1", "p50 b32", "p95 b32", "CPU b1", "CPU b32", "mem Δ b1", "mem Δ b32", "size",
                   *metrics):
        out.add_column(column, justify="right")
    for row in rows:
        out.add_row(row.label, *cell(row))
    return out


def values(metrics: tuple[str, ...]) -> Cell:
    def cell(row: Row) -> list[str]:
        return [fmt_ms(row.median("p50_ms", 1)), fmt_ms(row.median("p95_ms", 1)), fmt_ms(row.median("p50_ms", 32)),
                fmt_ms(row.median("p95_ms", 32)), fmt_ms(row.median("cpu_ms", 1)), fmt_ms(row.median("cpu_ms", 32)),
                f"{row.median('memory_bytes', 1) / 2**20:.1f} MiB",
                f"{row.median('memory_bytes', 32) / 2**20:.1f} MiB", f"{row.first.size_bytes / 2**20:.1f} MiB",
                *(f"{row.quality(m):.4f}" for m in metrics)]
    return cell


def ratios(against: Row, metrics: tuple[str, ...]) -> Cell:
    def cell(row: Row) -> list[str]:
        out = [f"{row.median(k, b) / against.median(k, b):.2f}×" for k, b in
               (("p50_ms", 1), ("p95_ms", 1), ("p50_ms", 32), ("p95_ms", 32), ("cpu_ms", 1), ("cpu_ms", 32),
                ("memory_bytes", 1), ("memory_bytes", 32))]
        out.append(f"{row.first.size_bytes / against.first.size_bytes:.2f}×")
        out += [f"{(row.quality(m) - against.quality(m)) * 100:+.2f} pt" for m in metrics]
        return out
    return cell


def verdict(name: str, value: float, target: float, *, at_least: bool, unit: str) -> str:
    """Fractions are shown in percent or points (margins of percentages are points); `unit="×"` as is."""
    met = value >= target if at_least else value <= target
    sign = "≥" if at_least else "≤"
    if unit == "×":
        shown, wanted, margin = f"{value:.2f}×", f"{target:.2f}×", f"{abs(value - target):.2f}×"
    else:
        shown, wanted = f"{value * 100:.1f}{unit}", f"{target * 100:.0f}{unit}"
        margin = f"{abs(value - target) * 100:.1f} points"
    return f"  {name}: {shown} (target {sign} {wanted}) — {'met' if met else 'MISSED'} by {margin}"


def targets(name: str, fp32: Row, int8: Row, candidates: list[Row], metric: str) -> None:
    budget = QUALITY_BUDGET[name]
    faithful = [c for c in candidates if fp32.quality(metric) - c.quality(metric) <= budget]
    if not candidates:
        console.print("  no modelroll candidate was built: every target missed")
        return
    best = min(faithful, key=lambda c: c.median("p50_ms", 1)) if faithful else \
        max(candidates, key=lambda c: c.quality(metric))
    why = f"fastest at batch 1 within {budget * 100:.0f} point(s) of {metric}" if faithful \
        else f"none within {budget * 100:.0f} point(s) of {metric}: the most faithful"
    console.print(f"targets for {name}, best candidate {best.label!r} ({why}):")
    for batch in (1, 32):
        lower = 1 - best.median("p50_ms", batch) / fp32.median("p50_ms", batch)
        console.print(verdict(f"p50 latency at batch {batch}, lower than FP32", lower, 0.5, at_least=True, unit=" %"))
    for batch in (1, 32):
        lower = 1 - best.median("memory_bytes", batch) / fp32.median("memory_bytes", batch)
        console.print(verdict(f"memory delta at batch {batch}, lower than FP32", lower, 0.6, at_least=True,
                              unit=" %"))
    console.print(verdict("size, smaller than FP32", 1 - best.first.size_bytes / fp32.first.size_bytes, 0.6,
                          at_least=True, unit=" %"))
    for batch in (1, 32):
        cpu = 1 - best.median("cpu_ms", batch) / fp32.median("cpu_ms", batch)
        console.print(f"  (CPU per request at batch {batch}, lower than FP32: {cpu * 100:.1f} %; "
                      "CPU time is what a busy machine disturbs least)")
    console.print(verdict(f"quality loss ({metric})", fp32.quality(metric) - best.quality(metric), budget,
                          at_least=False, unit=" points"))
    if name == "minilm-l6":
        console.print(verdict("quality loss (nn_agreement, shown, not gated)",
                              fp32.quality("nn_agreement") - best.quality("nn_agreement"), budget,
                              at_least=False, unit=" points"))
    for batch in (1, 32):
        speedup = int8.median("p50_ms", batch) / best.median("p50_ms", batch)
        console.print(verdict(f"speed-up over plain dynamic INT8 at batch {batch} (p50)", speedup, 1.3,
                              at_least=True, unit="×"))
    no_worse = best.quality(metric) >= int8.quality(metric)
    console.print(f"  quality vs plain dynamic INT8 ({metric}): {best.quality(metric):.4f} vs "
                  f"{int8.quality(metric):.4f} — {'met (no worse)' if no_worse else 'MISSED (worse)'}")


def bench_model(name: str, cache: Path, work: Path, rounds: int, recipes: tuple[str, ...]) -> None:
    started = time.monotonic()
    console.rule(f"{name}")
    source = builtin_source(name, cache)
    eval_path = work / f"{name}-eval.npz"
    arrays = eval_arrays(name, cache)
    np.savez(eval_path, **arrays)  # type: ignore[arg-type]
    eval_set = EvalSet.load(eval_path)
    shape = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
    console.print(f"  eval set: {shape}")
    fp32 = Row("FP32 ORT", source.onnx_path)
    int8 = Row("plain dynamic INT8", plain_dynamic_int8(source.onnx_path, work / f"{name}-int8.onnx"))
    reference = evaluate(fp32.path, eval_set, replace(CONFIG, batch_sizes=(1,), min_runs=1, max_time_s=0.1))
    assert reference.ok and reference.figures is not None and reference.figures.quality is not None
    assert reference.outputs is not None
    candidates = build_candidates(name, source, eval_set, reference.outputs, reference.figures.quality.value, work,
                                  recipes)
    rows = [fp32, int8, *candidates]
    measure(rows, eval_set, rounds)
    metrics = ("accuracy", "top1_agreement") if name == "digits" else ("cosine_mean", "nn_agreement")
    console.print(table(f"{name}: figures (median of {rounds} rounds; 1 thread)", rows, metrics, values(metrics)))
    console.print(table(f"{name}: ratio to FP32 ORT (quality: difference in points)", rows, metrics,
                        ratios(fp32, metrics)))
    console.print(table(f"{name}: ratio to plain dynamic INT8 (quality: difference in points)", rows, metrics,
                        ratios(int8, metrics)))
    targets(name, fp32, int8, candidates, metrics[0])
    console.print(f"  ({name} took {time.monotonic() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["digits", "minilm-l6"], choices=sorted(RECIPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=ROOT / ".modelroll" / "cache")
    parser.add_argument("--recipes", nargs="+", help="modelroll recipes to build (default: per model)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console.print(f"$ {COMMAND} {' '.join(sys.argv[1:])}".rstrip())
    console.print(f"one evaluator, a fresh process per measurement; batch 1 and 32; threads={CONFIG.threads}; "
                  f"{args.rounds} interleaved rounds; {os.cpu_count()} CPUs, load average {load()}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="modelroll-bench-") as tmp:
        for name in args.models:
            bench_model(name, args.cache, Path(tmp), args.rounds, tuple(args.recipes or RECIPES[name]))
    console.print(f"total {time.monotonic() - started:.0f} s; load average now {load()} "
                  "(other processes on the machine slow every variant, and widen p95 most)")


if __name__ == "__main__":
    main()
