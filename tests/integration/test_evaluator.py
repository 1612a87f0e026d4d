"""The evaluator on real ONNX models in real subprocesses: figures, quality, and failures that never raise."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.evaluate import EvalConfig, EvalSet, Stopped, evaluate, score, size_on_disk

QUICK = EvalConfig(batch_sizes=(1, 32), warmup_runs=2, min_runs=20, max_runs=200, max_time_s=1.0, check_every=10,
                   timeout_s=60)


def mlp(path: Path, hidden: int, *, seed: int = 0, output: str = "logits", out_dim: int = 10,
        noise: float = 0.0, external: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A 64 -> hidden -> out_dim ReLU MLP saved as ONNX; returns its weights (to score it with numpy)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.1, size=(64, hidden)).astype(np.float32)
    w2 = rng.normal(0, 0.1, size=(hidden, out_dim)).astype(np.float32)
    if noise:
        w2 = (w2 + np.random.default_rng(seed + 1).normal(0, noise, size=w2.shape)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], [output])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", out_dim])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return w1, w2


def forward(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    return np.asarray(np.maximum(x @ w1, 0) @ w2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    folder = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(42)
    x = rng.random((120, 64), dtype=np.float32)
    labels = rng.integers(0, 10, size=120)
    np.savez(folder / "eval.npz", x=x, labels=labels)
    return folder / "eval.npz", x, labels


def test_figures_at_each_batch_size_and_accuracy_on_labels(tmp_path: Path, data: tuple[Path, np.ndarray, np.ndarray]
                                                           ) -> None:
    path, x, labels = data
    w1, w2 = mlp(tmp_path / "m.onnx", 256)
    result = evaluate(tmp_path / "m.onnx", EvalSet.load(path), QUICK)
    assert result.ok, result.error
    fig = result.figures
    assert fig is not None and fig.threads == 1 and fig.batch_sizes == (1, 32)
    for lat in fig.latency:
        assert 0 < lat.p50_ms <= lat.p95_ms <= lat.p99_ms
        assert QUICK.min_runs <= lat.runs <= QUICK.max_runs and lat.cpu_ms > 0
    assert fig.latency_at(32).p50_ms > fig.latency_at(1).p50_ms  # type: ignore[union-attr]
    assert fig.size_bytes == (tmp_path / "m.onnx").stat().st_size
    assert fig.memory_at(1).memory_total_bytes == fig.runtime_bytes + fig.memory_at(1).memory_bytes  # type: ignore[union-attr]
    expected = float(np.mean(forward(x, w1, w2).argmax(1) == labels))
    assert fig.quality is not None and fig.quality.metric == "accuracy"
    assert fig.quality.accuracy == pytest.approx(expected) and fig.quality.top1_agreement == 1.0
    assert result.outputs is not None and np.allclose(result.outputs, forward(x, w1, w2), atol=1e-4)


def test_memory_delta_is_the_models_cost(tmp_path: Path, data: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = data
    mlp(tmp_path / "small.onnx", 64)
    mlp(tmp_path / "big.onnx", 64 * 1024)  # 64x65536 + 65536x10 floats = ~19 MiB of weights
    small = evaluate(tmp_path / "small.onnx", EvalSet.load(path), QUICK).figures
    big = evaluate(tmp_path / "big.onnx", EvalSet.load(path), QUICK).figures
    assert small is not None and big is not None
    weights = (64 * 65536 + 65536 * 10) * 4
    grew = big.memory_at(1).memory_bytes - small.memory_at(1).memory_bytes  # type: ignore[union-attr]
    assert weights * 0.9 < grew < weights * 4, (grew, weights)
    assert abs(big.runtime_bytes - small.runtime_bytes) < 8 * 2**20  # same runtime either way


def test_agreement_with_baseline_when_there_are_no_labels(tmp_path: Path,
                                                          data: tuple[Path, np.ndarray, np.ndarray]) -> None:
    _, x, _ = data
    np.savez(tmp_path / "unlabelled.npz", x=x)
    unlabelled = EvalSet.load(tmp_path / "unlabelled.npz")
    mlp(tmp_path / "base.onnx", 128, output="embedding", out_dim=32)
    mlp(tmp_path / "cand.onnx", 128, output="embedding", out_dim=32, noise=0.05)
    base = evaluate(tmp_path / "base.onnx", unlabelled, QUICK)
    assert base.ok and base.figures is not None and base.figures.quality is not None
    assert base.figures.quality.metric == "cosine_mean" and base.figures.quality.nn_agreement == 1.0
    assert base.figures.quality.value == pytest.approx(1.0)
    cand = evaluate(tmp_path / "cand.onnx", unlabelled, QUICK, reference=base.outputs)
    assert cand.ok and cand.figures is not None and cand.figures.quality is not None
    assert 0.5 < cand.figures.quality.cosine_mean < 0.9999  # type: ignore[operator]
    assert 0.0 <= cand.figures.quality.nn_agreement < 1.0  # type: ignore[operator]


def test_score_top1_agreement_and_nearest_neighbours() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    flipped = reference[:, ::-1].copy()
    assert score(reference, labels=None, reference=reference, task="classification").value == 1.0
    assert score(flipped, labels=None, reference=reference, task="classification").value == 0.0
    emb = score(flipped, labels=None, reference=reference, task="embedding")
    assert emb.nn_agreement == 1.0 and emb.cosine_mean == pytest.approx(np.mean([0, 0, 0.19802, 0.19802]), abs=1e-4)
    with pytest.raises(ValueError, match="cannot be compared"):
        score(reference[:, :1], labels=None, reference=reference, task="embedding")


def test_external_data_counts_in_size_on_disk(tmp_path: Path) -> None:
    mlp(tmp_path / "ext.onnx", 512, external=True)
    data_bytes = (tmp_path / "ext.onnx.data").stat().st_size
    assert data_bytes > 64 * 512 * 4
    assert size_on_disk(tmp_path / "ext.onnx") == (tmp_path / "ext.onnx").stat().st_size + data_bytes


def test_not_an_onnx_model_fails_the_measurement_with_the_reason(tmp_path: Path,
                                                                data: tuple[Path, np.ndarray, np.ndarray]) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"definitely not protobuf")
    result = evaluate(tmp_path / "junk.onnx", EvalSet.load(data[0]), QUICK)
    assert not result.ok and result.figures is None
    assert "InvalidProtobuf" in result.error or "Load model" in result.error


def test_eval_data_without_the_models_input_names_it(tmp_path: Path) -> None:
    mlp(tmp_path / "m.onnx", 32)
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((4, 64), np.float32))
    result = evaluate(tmp_path / "m.onnx", EvalSet.load(tmp_path / "wrong.npz"), QUICK)
    assert not result.ok and "['x']" in result.error and "pixels" in result.error


def test_hung_measurement_times_out_and_fails_only_that_variant(tmp_path: Path,
                                                               data: tuple[Path, np.ndarray, np.ndarray]) -> None:
    mlp(tmp_path / "m.onnx", 32)
    endless = EvalConfig(batch_sizes=(1,), min_runs=10**9, max_runs=10**9, max_time_s=3600, timeout_s=1.5)
    started = time.monotonic()
    result = evaluate(tmp_path / "m.onnx", EvalSet.load(data[0]), endless)
    assert time.monotonic() - started < 10
    assert not result.ok and "timed out after 1.5 s" in result.error
    assert _measure_children() == []


def _measure_children() -> list[int]:
    """Our live child processes running optimizer.measure."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        if ppid == os.getpid() and b"optimizer.measure" in cmdline and "State:\tZ" not in status:
            found.append(int(entry.name))
    return found


def _wait_for_child(deadline_s: float = 20.0) -> int:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pids = _measure_children()
        if pids:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError("the measurement process never started")


def test_killed_measurement_fails_with_the_signal(tmp_path: Path, data: tuple[Path, np.ndarray, np.ndarray]) -> None:
    mlp(tmp_path / "m.onnx", 32)
    endless = EvalConfig(batch_sizes=(1,), min_runs=10**9, max_runs=10**9, max_time_s=3600, timeout_s=60)
    results = []
    thread = threading.Thread(target=lambda: results.append(evaluate(tmp_path / "m.onnx", EvalSet.load(data[0]),
                                                                     endless)))
    thread.start()
    os.kill(_wait_for_child(), signal.SIGKILL)
    thread.join(30)
    assert results and not results[0].ok
    assert "killed by SIGKILL" in results[0].error


def test_stop_event_ends_the_measurement_at_once(tmp_path: Path, data: tuple[Path, np.ndarray, np.ndarray]) -> None:
    mlp(tmp_path / "m.onnx", 32)
    endless = EvalConfig(batch_sizes=(1,), min_runs=10**9, max_runs=10**9, max_time_s=3600, timeout_s=60)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        evaluate(tmp_path / "m.onnx", EvalSet.load(data[0]), endless, stop=stop)
    assert time.monotonic() - started < 5
    assert _measure_children() == []
