"""Optimizer benchmark: FP32 onnxruntime, plain `quantize_dynamic` INT8, OpenVINO + NNCF post-training INT8 with
default settings (what an Intel-savvy user would pick) and modelroll's candidates, for the digits CNN (trained at
first use) and all-MiniLM-L6-v2 (the digits MLP on request), measured side by side in one run by the one evaluator.

Each variant is measured in a fresh process (1 thread, batch 1 and 32), in interleaved rounds whose
medians are reported, so that a busy machine slows every variant alike. Prints per model the figures,
their ratios to FP32, to plain dynamic INT8 and to the OpenVINO default, and a met/missed line per target
(bench/optimize_targets.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimize_targets import Anchors, Row, report  # noqa: E402

from optimizer.baselines import builtin_source, eval_arrays  # noqa: E402
from optimizer.evaluate import EvalConfig, EvalSet, evaluate, measure_quality  # noqa: E402
from optimizer.model_kind import model_kind  # noqa: E402
from optimizer.recipes import GOOD_RECIPE, search  # noqa: E402
from optimizer.sources import ModelSource  # noqa: E402

COMMAND = ".venv/bin/python bench/optimize.py"
RECIPES = {
    "digits": ("int8", GOOD_RECIPE, "int8-static"),
    "digits-cnn": ("int8-static", "ov-int8:cache=0"),
    "minilm-l6": ("int8:per_channel", "ov-int8:cache=0", "ov-weights:cache=0"),
}
MAX_TRIES = 2
QUALITY_BUDGET = {"digits": 0.02, "digits-cnn": 0.01, "minilm-l6": 0.003}  # issue 17: cosine >= 0.997
OPENVINO_CALIBRATION = 100  # samples, as the user ran nncf.quantize
CONFIG = EvalConfig(batch_sizes=(1, 32), threads=1, warmup_runs=5, min_runs=20, max_runs=2000, max_time_s=4.0,
                    check_every=10, timeout_s=900)
console = Console(width=220)


def plain_dynamic_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(str(src), str(dst))  # the defaults, as a user would call it
    return dst


def openvino_default(source: ModelSource, dst: Path) -> Path:
    """OpenVINO + NNCF post-training INT8 as a user would call it: `nncf.quantize` on the converted ONNX file,
    the transformer preset for an encoder, OpenVINO's defaults otherwise (built in a fresh process)."""
    from optimizer.ov_child import build_in_child

    kind = model_kind(source.onnx_path).kind
    options = {"kind": "transformer" if kind == "transformer" else "cnn", "subset": OPENVINO_CALIBRATION,
               "embeddings": "expand", "exclude": 0, "fast_bias": True, "precision": "default", "cache": -1}
    built = build_in_child("ov-int8", options, source.onnx_path, source.calibration, dst, recipe="openvino default")
    return Path(built["folder"])


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
        rows.append(Row(f"modelroll {chosen.recipe}", chosen.model_path, chosen.recipe))
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
    openvino = Row("OpenVINO + NNCF INT8, defaults", openvino_default(source, work / f"{name}-openvino"))
    reference = evaluate(fp32.path, eval_set, replace(CONFIG, batch_sizes=(1,), min_runs=1, max_time_s=0.1))
    assert reference.ok and reference.figures is not None and reference.figures.quality is not None
    assert reference.outputs is not None
    candidates = build_candidates(name, source, eval_set, reference.outputs, reference.figures.quality.value, work,
                                  recipes)
    rows = [fp32, int8, openvino, *candidates]
    measure(rows, eval_set, rounds)
    metrics = ("cosine_mean", "nn_agreement") if name == "minilm-l6" else ("accuracy", "top1_agreement")
    console.print(table(f"{name}: figures (median of {rounds} rounds; 1 thread)", rows, metrics, values(metrics)))
    for against, title in ((fp32, "FP32 ORT"), (int8, "plain dynamic INT8"), (openvino, "the OpenVINO default")):
        console.print(table(f"{name}: ratio to {title} (quality: difference in points)", rows, metrics,
                            ratios(against, metrics)))
    for row in rows:
        console.print(f"  {row.label}: {row.first.runtime_label}; runtime before load "
                      f"{row.first.runtime_bytes / 2**20:.0f} MiB (not the model's)")
    report(name, Anchors(fp32, int8, openvino), candidates, console.print)
    console.print(f"  ({name} took {time.monotonic() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["digits-cnn", "minilm-l6"], choices=sorted(RECIPES))
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
