"""Tiny real ONNX files for tests, built with onnx.helper (a linear layer, and one the checker rejects)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_linear(path: Path, in_features: int = 4, out_features: int = 3, seed: int = 0) -> Path:
    """y = x @ W + b, float32, dynamic batch; different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((in_features, out_features)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(out_features).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_features])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_unsorted_graph(path: Path) -> Path:
    """Parses as ONNX but fails the checker: a node reads an input nothing produces."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
