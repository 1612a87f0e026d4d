"""Small real ONNX models for the router's tests: a digits classifier, its INT8 twin, a broken twin, all datatypes.

The classifier is an MLP trained on sklearn's digits and written out with onnx.helper, so its
answers (and the feedback joined to them) are real. Files are built once per directory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
DTYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "INT8": TensorProto.INT8, "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64, "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def _trained_weights(hidden: int) -> list[np.ndarray]:
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    x, y = digits_data()
    # One BLAS thread: on a shared 2-core machine more threads only fight (10x slower measured).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # not converged to the last digit: accurate enough (~97 %) for the tests
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=200, random_state=0).fit(x[:1500], y[:1500])
    return [clf.coefs_[0], clf.intercepts_[0], clf.coefs_[1], clf.intercepts_[1]]


def _mlp_graph(weights: list[np.ndarray], broken: bool = False) -> onnx.GraphProto:
    w1, b1, w2, b2 = (np.asarray(w, dtype=np.float32) for w in weights)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["z0"]),
    ]
    if broken:
        # Index 99 of 10 classes: every run fails inside onnxruntime, the signature stays the baseline's.
        inits.append(numpy_helper.from_array(np.array([99, 1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=np.int64), "idx"))
        nodes += [helper.make_node("Add", ["z0", "b2"], ["z1"]),
                  helper.make_node("Gather", ["z1", "idx"], ["logits"], axis=1)]
    else:
        nodes.append(helper.make_node("Add", ["z0", "b2"], ["logits"]))
    return helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
        initializer=inits,
    )


def build_digits(directory: Path, hidden: int = 64) -> dict[str, Path]:
    """baseline.onnx (FP32 MLP), int8.onnx (dynamic INT8 of it), broken.onnx (fails at run time)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {n: directory / f"{n}.onnx" for n in ("baseline", "int8", "broken")}
    if all(p.exists() for p in paths.values()):
        return paths
    weights = _trained_weights(hidden)
    _save(_mlp_graph(weights), paths["baseline"])
    _save(_mlp_graph(weights, broken=True), paths["broken"])
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(paths["baseline"]), str(paths["int8"]), weight_type=QuantType.QInt8)
    return paths


def build_all_types(path: Path) -> Path:
    """Identity for every datatype: input `in_<dt>` [-1, 3] -> output `out_<dt>` (BYTES: [-1])."""
    if path.exists():
        return path
    inputs, outputs, nodes = [], [], []
    for name, proto in DTYPES.items():
        shape = [None] if name == "BYTES" else [None, 3]
        low = name.lower()
        inputs.append(helper.make_tensor_value_info(f"in_{low}", proto, shape))
        outputs.append(helper.make_tensor_value_info(f"out_{low}", proto, shape))
        nodes.append(helper.make_node("Identity", [f"in_{low}"], [f"out_{low}"]))
    return _save(helper.make_graph(nodes, "all_types", inputs, outputs), path)


def build_slow(path: Path, width: int = 2048, layers: int = 4) -> Path:
    """Digits-shaped ([N, 64] -> [N, 10]) but deliberately slow: a few ms per row (deadline tests)."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.normal(size=(64, width)) / 8).astype(np.float32), "w_in"),
             numpy_helper.from_array((rng.normal(size=(width, width)) / width).astype(np.float32), "w"),
             numpy_helper.from_array((rng.normal(size=(width, 10)) / width).astype(np.float32), "w_out")]
    nodes = [helper.make_node("MatMul", ["input", "w_in"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "w_out"], ["logits"]))
    return _save(helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], initializer=inits), path)
