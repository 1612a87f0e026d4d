"""Child side of the evaluator: measure one variant in this fresh process and write the figures as JSON.

Run as `python -m optimizer.measure SPEC.json` (or the spec on stdin). Imports numpy and the variant's runtime
alone (onnxruntime for an ONNX file, openvino for an IR folder), and loads that runtime's code (every page of
its libraries, modelroll/residency.py) before the memory reading the model's figure starts from: the runtime's
fixed cost is measured and reported beside, never charged to the model.
"""

from __future__ import annotations

import os

# Before numpy/onnxruntime load their thread pools: the thread count is part of what is measured.
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from modelroll.residency import prefault_libraries  # noqa: E402

KIB = 1024
_CORE: Any = None  # OpenVINO's Core, kept alive so the CPU plugin stays loaded (its load is the runtime's cost)


def read_memory_bytes() -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of this process, in bytes."""
    figures: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                figures[key] = int(value.split()[0]) * KIB
    return figures


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0) so import-time peaks are not charged to the model."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def make_session(model_path: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])


def batch_feeds(inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """The first `batch_size` rows of every input (repeated when the eval set is smaller), contiguous."""
    feeds = {}
    for name, array in inputs.items():
        rows = np.resize(np.arange(len(array)), batch_size)
        feeds[name] = np.ascontiguousarray(array[rows])
    return feeds


class OrtModel:
    """An ONNX file in an onnxruntime session (the settings every variant here is measured with)."""

    def __init__(self, path: str, threads: int, output_name: str | None) -> None:
        import onnxruntime as ort

        self.session = make_session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = self.session.get_outputs()
        output = next((o for o in outputs if o.name == output_name), outputs[0])
        self.output_name, self.output_rank = output.name, len(output.shape)
        self.runtime, self.settings = f"onnxruntime {ort.__version__}", dict[str, str]()

    def run(self, feeds: dict[str, np.ndarray]) -> None:
        self.session.run(None, feeds)

    def output(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], feeds)[0])


class OvModel:
    """An OpenVINO IR folder compiled for the CPU with the settings its manifest records."""

    def __init__(self, folder: str, threads: int, output_name: str | None) -> None:
        import openvino as ov

        from modelroll.openvino_ir import XML, compile_config, read_manifest

        manifest = read_manifest(Path(folder))
        self.compiled = _CORE.compile_model(str(Path(folder) / XML), "CPU", compile_config(manifest.config, threads))
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        outputs = list(self.compiled.outputs)
        self.port = next((o for o in outputs if output_name in o.get_names()), outputs[0])
        self.output_name = self.port.get_any_name()
        self.output_rank = self.port.get_partial_shape().rank.get_length()
        self.runtime, self.settings = f"openvino {ov.__version__.split('-')[0]}", dict(manifest.config)

    def run(self, feeds: dict[str, np.ndarray]) -> None:
        self.request.infer(feeds, share_inputs=True)

    def output(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.request.infer(feeds)[self.port])


def load_runtime(fmt: str, threads: int) -> None:
    """Load the runtime's code and thread pool before the model's memory is measured: onnxruntime by importing it,
    OpenVINO by also compiling and running a one-operation model (that loads its CPU plugin)."""
    global _CORE
    if fmt != "openvino":
        import onnxruntime  # noqa: F401

        return
    import openvino as ov

    from modelroll.openvino_ir import compile_config

    _CORE = ov.Core()
    parameter = ov.opset13.parameter([1], np.float32)
    tiny = _CORE.compile_model(ov.Model([ov.opset13.relu(parameter)], [parameter]), "CPU",
                               compile_config({}, threads))
    tiny.create_infer_request().infer([np.zeros(1, np.float32)])
    del tiny


def load_model(spec: dict[str, Any]) -> OrtModel | OvModel:
    if spec.get("format") == "openvino":
        return OvModel(spec["model_path"], int(spec["threads"]), spec.get("output_name"))
    return OrtModel(spec["model_path"], int(spec["threads"]), spec.get("output_name"))


def time_runs(model: OrtModel | OvModel, feeds: dict[str, np.ndarray], spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then time runs until the p95 moves by less than the tolerance (bounded by runs and time)."""
    for _ in range(int(spec["warmup_runs"])):
        model.run(feeds)
    min_runs, max_runs = int(spec["min_runs"]), int(spec["max_runs"])
    check_every, tolerance = int(spec["check_every"]), float(spec["p95_tolerance"])
    deadline = time.monotonic() + float(spec["max_time_s"])
    wall_ns: list[int] = []
    cpu_ns: list[int] = []
    previous_p95: float | None = None
    stable = False
    started = time.monotonic()
    while len(wall_ns) < max_runs:
        c0 = time.process_time_ns()
        t0 = time.perf_counter_ns()
        model.run(feeds)
        t1 = time.perf_counter_ns()
        c1 = time.process_time_ns()
        wall_ns.append(t1 - t0)
        cpu_ns.append(c1 - c0)
        count = len(wall_ns)
        if count >= min_runs and count % check_every == 0:
            p95 = float(np.percentile(wall_ns, 95))
            if previous_p95 is not None and abs(p95 - previous_p95) <= tolerance * previous_p95:
                stable = True
                break
            previous_p95 = p95
        if time.monotonic() > deadline and count >= min(min_runs, 3):
            break
    wall_ms = np.asarray(wall_ns, dtype=np.float64) / 1e6
    p50, p95, p99 = np.percentile(wall_ms, [50, 95, 99])
    return {
        "runs": len(wall_ns), "warmup_runs": int(spec["warmup_runs"]), "stable": stable,
        "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
        "mean_ms": float(wall_ms.mean()), "min_ms": float(wall_ms.min()),
        "cpu_ms": float(np.mean(cpu_ns) / 1e6), "elapsed_s": time.monotonic() - started,
    }


def pooled(output: np.ndarray, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Token embeddings (batch, tokens, dim) become sentence embeddings by the attention-masked mean."""
    if output.ndim != 3:
        return output.reshape(output.shape[0], -1)
    mask = feeds.get("attention_mask")
    if mask is None:
        return np.asarray(output.mean(axis=1))
    weights = mask.astype(np.float32)[:, :, None]
    return np.asarray((output * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None))


def quality_outputs(model: OrtModel | OvModel, inputs: dict[str, np.ndarray], chunk: int) -> np.ndarray:
    rows = len(next(iter(inputs.values())))
    parts = []
    for start in range(0, rows, chunk):
        feeds = {name: np.ascontiguousarray(array[start:start + chunk]) for name, array in inputs.items()}
        parts.append(pooled(model.output(feeds), feeds).astype(np.float32))
    return np.concatenate(parts)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    with np.load(spec["inputs_path"], allow_pickle=False) as archive:
        all_arrays = {name: archive[name] for name in archive.files}
    batch_sizes = sorted(int(b) for b in spec["batch_sizes"])
    load_runtime(str(spec.get("format", "onnx")), int(spec["threads"]))
    prefault_libraries()  # the runtime's code is its fixed cost, not the model's (modelroll/residency.py)
    gc.collect()
    peak_reset = reset_peak()
    before = read_memory_bytes()
    t0 = time.perf_counter()
    model = load_model(spec)
    load_ms = (time.perf_counter() - t0) * 1e3
    after_load = read_memory_bytes()
    missing = [name for name in model.input_names if name not in all_arrays]
    if missing:
        raise ValueError(f"eval data has no array for model input(s) {missing}; it has {sorted(all_arrays)}")
    inputs = {name: all_arrays[name] for name in model.input_names}
    latency, memory = [], []
    for batch_size in batch_sizes:
        feeds = batch_feeds(inputs, batch_size)
        figures = time_runs(model, feeds, spec)
        peak = read_memory_bytes()["VmHWM"]
        latency.append({"batch_size": batch_size, **figures})
        memory.append({"batch_size": batch_size, "memory_bytes": peak - before["VmRSS"],
                       "memory_total_bytes": peak})
        del feeds
    outputs = quality_outputs(model, inputs, max(batch_sizes, default=32))
    if spec.get("outputs_path"):
        np.save(spec["outputs_path"], outputs)
    return {
        "ok": True,
        "latency": latency,
        "memory": memory,
        "runtime_bytes": before["VmRSS"],
        "rss_after_load_bytes": after_load["VmRSS"],
        "peak_after_load_bytes": after_load["VmHWM"],
        "peak_reset": peak_reset,
        "load_ms": load_ms,
        "threads": int(spec["threads"]),
        "output_name": model.output_name,
        "output_rank": model.output_rank,
        "output_shape": list(outputs.shape),
        "onnxruntime": model.runtime.split(" ")[1] if model.runtime.startswith("onnxruntime") else "",
        "runtime": model.runtime,
        "runtime_settings": model.settings,
        "python": platform.python_version(),
        "pid": os.getpid(),
    }


def die_with_parent(parent_pid: int | None) -> None:
    """Linux: be killed when the evaluating process dies (a killed worker leaves no measurement running)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect


def main(argv: list[str]) -> int:
    raw = Path(argv[1]).read_text() if len(argv) > 1 else sys.stdin.read()
    spec = json.loads(raw)
    die_with_parent(spec.get("parent_pid"))
    try:
        result = measure(spec)
        code = 0
    except Exception as exc:  # every failure becomes the candidate's reason, written for the parent
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        code = 1
    Path(spec["result_path"]).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
