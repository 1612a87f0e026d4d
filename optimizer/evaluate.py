"""One evaluator for every variant, whatever its runtime: measure it in a fresh subprocess, then score its outputs.

A variant is an ONNX file (onnxruntime) or an OpenVINO IR folder (model.xml, model.bin, modelroll.json); the child
loads it with its runtime and the settings its artifact records, and measures it the same way.

A hung or crashed measurement returns a failed `Measurement` with the reason; it never raises, so one
bad candidate cannot fail a job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modelroll import openvino_ir
from modelroll.figures import Figures, LatencyFigures, MemoryFigures, QualityFigures
from modelroll.runtimes import FORMAT_RUNTIME, installed_version

log = logging.getLogger(__name__)

TASKS = ("classification", "embedding")


@dataclass(frozen=True, slots=True)
class EvalConfig:
    """How hard to measure; the defaults give a stable p95 on a quiet CPU within seconds per batch size."""

    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int = 1
    warmup_runs: int = 10
    min_runs: int = 60
    max_runs: int = 3000
    max_time_s: float = 10.0
    check_every: int = 30
    p95_tolerance: float = 0.03
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes}")
        if self.threads < 1 or self.min_runs < 1 or self.max_runs < self.min_runs or self.check_every < 1:
            raise ValueError("threads, min_runs, check_every must be >= 1 and max_runs >= min_runs")


@dataclass(frozen=True, slots=True)
class EvalSet:
    """Eval inputs (.npz, one array per model input, optional `labels`) and the kind of model they feed."""

    path: Path
    labels: np.ndarray | None = None
    task: str | None = None  # None: inferred by `infer_task`

    @classmethod
    def load(cls, path: Path, task: str | None = None) -> EvalSet:
        with np.load(path, allow_pickle=False) as archive:
            labels = archive["labels"] if "labels" in archive.files else None
        return cls(path=path, labels=labels, task=task)


@dataclass(frozen=True, slots=True)
class Measurement:
    ok: bool
    figures: Figures | None = None
    outputs: np.ndarray | None = None  # the eval set's outputs (pooled for embeddings): the reference for agreement
    error: str = ""


def artifact_format(model_path: Path) -> str:
    """"openvino" for an IR folder, "onnx" for anything else (checked when loaded)."""
    return openvino_ir.FORMAT if Path(model_path).is_dir() else "onnx"


def runtime_meta(model_path: Path) -> dict[str, Any]:
    """The runtime a variant is built for, the version it was built with and its settings, as the catalog
    records them beside the recipe (the router refuses a variant whose runtime is not installed)."""
    fmt = artifact_format(model_path)
    if fmt == openvino_ir.FORMAT:
        manifest = openvino_ir.read_manifest(model_path)
        return {"runtime": FORMAT_RUNTIME[fmt], "runtime_version": manifest.runtime_version,
                "runtime_settings": dict(manifest.config)}
    return {"runtime": FORMAT_RUNTIME[fmt], "runtime_version": installed_version(FORMAT_RUNTIME[fmt]) or ""}


def size_on_disk(model_path: Path) -> int:
    """Bytes of the model file plus every external-data file it references (an IR folder: its three files)."""
    if Path(model_path).is_dir():
        return openvino_ir.size_bytes(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    locations: set[str] = set()
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                locations.update(e.value for e in tensor.external_data if e.key == "location")
        for node in graph.node:
            graphs.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
    return model_path.stat().st_size + sum((model_path.parent / loc).stat().st_size for loc in locations)


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    # glibc moves its mmap threshold after large frees, so the same model's peak RSS flips between two
    # values run to run (28 vs 36 MiB seen); pinning it at glibc's own default makes the peak repeatable.
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    return env


def _crash_reason(returncode: int, output: bytes, what: str = "measurement") -> str:
    if returncode < 0:
        try:
            how = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    else:
        how = f"exited with code {returncode}"
    tail = output.decode(errors="replace").strip().splitlines()[-3:]
    return f"{what} process {how} before writing its result" + (f": {' | '.join(tail)}" if tail else "")


class Stopped(Exception):
    """The caller asked the evaluation to stop (worker shutting down); nothing was measured."""


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def run_child(spec: dict[str, Any], timeout_s: float, threads: int,
              stop: threading.Event | None = None, *, module: str = "optimizer.measure",
              label: str = "", what: str = "measurement") -> dict[str, Any]:
    """Run `python -m <module>` (the measurement, or a build child) on `spec`; {"ok": False, "error": ...} on
    crash, hang or error. What the child prints (runtime and library log lines, progress bars) goes into this
    process's log at debug level, never to the terminal."""
    result_path = Path(spec["result_path"])
    result_path.unlink(missing_ok=True)
    spec = {**spec, "parent_pid": os.getpid()}
    proc = subprocess.Popen(
        [sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=_child_env(threads), start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    payload: bytes | None = json.dumps(spec).encode()
    try:
        while True:
            try:
                output, _ = proc.communicate(payload, timeout=max(0.0, min(0.5, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                payload = None  # already written; communicate() must not send it twice
                if stop is not None and stop.is_set():
                    _kill(proc)
                    raise Stopped("evaluation stopped: the worker is shutting down") from None
                if time.monotonic() >= deadline:
                    _kill(proc)
                    return {"ok": False, "error": f"{what} timed out after {timeout_s:g} s (hung model or "
                                                  "runtime); raise eval_timeout_s if the model is just slow"}
    except BaseException:
        if proc.returncode is None:
            _kill(proc)
        raise
    for line in output.decode(errors="replace").splitlines():
        if line.strip():
            log.debug("%s %s| %s", module, label, line.rstrip())
    if result_path.exists():
        try:
            result: dict[str, Any] = json.loads(result_path.read_text())
            return result
        except json.JSONDecodeError:
            pass
    return {"ok": False, "error": _crash_reason(proc.returncode, output, what)}


def figures_from_child(raw: dict[str, Any], size_bytes: int, quality: QualityFigures | None) -> Figures:
    latency = tuple(LatencyFigures(**{k: f[k] for k in LatencyFigures.__dataclass_fields__}) for f in raw["latency"])
    memory = tuple(MemoryFigures(**f) for f in raw["memory"])
    return Figures(size_bytes=size_bytes, latency=latency, memory=memory, quality=quality,
                   runtime_bytes=int(raw["runtime_bytes"]), load_ms=float(raw["load_ms"]),
                   threads=int(raw["threads"]), onnxruntime=str(raw.get("onnxruntime", "")),
                   runtime=str(raw.get("runtime", "")), runtime_settings=dict(raw.get("runtime_settings") or {}))


def _normalized(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return np.asarray(x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None))


def nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    unit = _normalized(embeddings)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.asarray(np.argmax(similarity, axis=1))


def score(outputs: np.ndarray, *, labels: np.ndarray | None, reference: np.ndarray | None,
          task: str) -> QualityFigures:
    """Accuracy on labels when there are any; otherwise agreement with the baseline's outputs."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    rows = len(outputs)
    if reference is not None and reference.shape != outputs.shape:
        raise ValueError(f"outputs of shape {outputs.shape} cannot be compared with the baseline's {reference.shape}")
    if task == "embedding":
        if reference is None:
            raise ValueError("an embedding model without labels is scored against the baseline's outputs: none given")
        cosine = float(np.mean(np.sum(_normalized(outputs) * _normalized(reference), axis=1)))
        nn = float(np.mean(nearest_neighbours(outputs) == nearest_neighbours(reference))) if rows > 1 else 1.0
        return QualityFigures("cosine_mean", rows, cosine_mean=cosine, nn_agreement=nn)
    top1 = np.argmax(outputs, axis=1)
    agreement = float(np.mean(top1 == np.argmax(reference, axis=1))) if reference is not None else None
    if labels is not None:
        if len(labels) != rows:
            raise ValueError(f"eval data has {len(labels)} labels for {rows} rows")
        accuracy = float(np.mean(top1 == labels.reshape(-1)))
        return QualityFigures("accuracy", rows, accuracy=accuracy, top1_agreement=agreement)
    if agreement is None:
        raise ValueError("a classifier without labels is scored against the baseline's outputs: none given")
    return QualityFigures("top1_agreement", rows, top1_agreement=agreement)


def infer_task(has_labels: bool, output_rank: int, output_name: str) -> str:
    """Labels mean a classifier; token outputs or an output named like an embedding mean an encoder."""
    if has_labels:
        return "classification"
    return "embedding" if output_rank == 3 or "embed" in output_name.lower() else "classification"


def _spec(model_path: Path, eval_set: EvalSet, config: EvalConfig, tmp: Path, batch_sizes: tuple[int, ...]
          ) -> dict[str, Any]:
    return {
        "model_path": str(model_path), "format": artifact_format(model_path), "inputs_path": str(eval_set.path),
        "outputs_path": str(tmp / "outputs.npy"), "result_path": str(tmp / "result.json"),
        "batch_sizes": list(batch_sizes), "threads": config.threads,
        "warmup_runs": config.warmup_runs, "min_runs": config.min_runs, "max_runs": config.max_runs,
        "max_time_s": config.max_time_s, "check_every": config.check_every,
        "p95_tolerance": config.p95_tolerance,
    }


def measure_quality(model_path: Path, eval_set: EvalSet, config: EvalConfig, *, reference: np.ndarray | None,
                    stop: threading.Event | None = None) -> QualityFigures:
    """Quality only (no timing), in a fresh process like every measurement; raises ValueError on failure."""
    with tempfile.TemporaryDirectory(prefix="modelroll-quality-") as tmp:
        raw = run_child(_spec(model_path, eval_set, config, Path(tmp), ()), config.timeout_s, config.threads, stop)
        if not raw.get("ok"):
            raise ValueError(f"quality of {model_path.name} could not be measured: {raw.get('error')}")
        outputs = np.load(Path(tmp) / "outputs.npy")
    task = eval_set.task or infer_task(eval_set.labels is not None, raw["output_rank"], raw["output_name"])
    return score(outputs, labels=eval_set.labels, reference=reference if reference is not None else outputs,
                 task=task)


def evaluate(model_path: Path, eval_set: EvalSet, config: EvalConfig, *, workdir: Path | None = None,
             reference: np.ndarray | None = None, label: str = "", stop: threading.Event | None = None,
             ) -> Measurement:
    """Measure `model_path` in a fresh process and score it; `reference` = the baseline's outputs, if known."""
    with tempfile.TemporaryDirectory(prefix="modelroll-eval-", dir=workdir) as tmp:
        outputs_path = Path(tmp) / "outputs.npy"
        spec = _spec(model_path, eval_set, config, Path(tmp), config.batch_sizes)
        raw = run_child(spec, config.timeout_s, config.threads, stop)
        if not raw.get("ok"):
            log.warning("evaluation failed variant=%s error=%s", label, raw.get("error"))
            return Measurement(ok=False, error=str(raw.get("error")))
        outputs = np.load(outputs_path)
    task = eval_set.task or infer_task(eval_set.labels is not None, raw["output_rank"], raw["output_name"])
    try:
        quality = score(outputs, labels=eval_set.labels, reference=reference if reference is not None else outputs,
                        task=task)
        figures = figures_from_child(raw, size_on_disk(model_path), quality)
    except (ValueError, KeyError, OSError) as exc:
        return Measurement(ok=False, error=f"{type(exc).__name__}: {exc}")
    return Measurement(ok=True, figures=figures, outputs=outputs)
