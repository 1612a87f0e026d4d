"""SmoothQuant for ONNX: move activation outliers into the weights before INT8 quantization.

Per-tensor INT8 activations lose precision when a few channels are much larger than the rest
(BERT-like encoders have such channels). For each group of MatMuls sharing one float input X and
holding constant weights W, a per-channel factor s = max|X|^α / max|W|^(1-α) (measured on
calibration batches) rewrites X·W as (X/s)·(s·W): the same function in float, flatter activations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from modelroll.errors import InvalidInput
from optimizer.sources import check_onnx


@dataclass(frozen=True, slots=True)
class SmoothResult:
    output_path: Path
    groups: int
    matmuls: int
    alpha: float


def _activation_max(model: onnx.ModelProto, names: list[str],
                    feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in existing)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    peaks: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = dict(zip(outputs, session.run(None, feed), strict=True))
        for name in names:
            value = np.abs(values[name])
            peak = value.reshape(-1, value.shape[-1]).max(axis=0)
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def smooth(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]], *, alpha: float = 0.5) -> SmoothResult:
    """Write to `dst` the smoothed equivalent of `src`: one Mul per shared MatMul input, weights rescaled."""
    if not 0.0 < alpha < 1.0:
        raise InvalidInput(f"smoothing alpha must be in (0, 1), got {alpha}")
    if not feeds:
        raise InvalidInput("smoothing needs calibration batches to measure activation ranges")
    model = onnx.load(str(check_onnx(src).path))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is not None and len(weight.dims) == 2 and node.input[0] not in weights:
            groups[node.input[0]].append(node)
    peaks = _activation_max(model, sorted(groups), feeds)
    scaled_weights: dict[str, onnx.TensorProto] = {}
    new_nodes: dict[str, onnx.NodeProto] = {}
    for name, nodes in groups.items():
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        if peaks[name].shape[0] != arrays[0].shape[0]:
            continue
        weight_peak = np.max([np.abs(a).max(axis=1) for a in arrays], axis=0)
        scale = np.power(np.maximum(peaks[name], 1e-5), alpha) / np.power(np.maximum(weight_peak, 1e-5), 1 - alpha)
        scale = np.clip(scale, 1e-3, 1e3).astype(np.float32)
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}_smooth_inverse")
        graph.initializer.append(inverse)
        smoothed = f"{name}_smoothed"
        new_nodes[name] = helper.make_node("Mul", [name, inverse.name], [smoothed], name=f"{name}_Smooth")
        for node, array in zip(nodes, arrays, strict=True):
            # Weights shared by several MatMuls would be scaled twice: give each its own copy.
            tensor = numpy_helper.from_array((array * scale[:, None]).astype(array.dtype), f"{node.name}_smoothed_w")
            scaled_weights[node.name] = tensor
            node.input[0], node.input[1] = smoothed, tensor.name
    graph.initializer.extend(scaled_weights.values())
    # Keep the order topological: each Mul goes right before the first node that reads it.
    ordered: list[onnx.NodeProto] = []
    placed: set[str] = set()
    for node in graph.node:
        for source in list(new_nodes):
            if source not in placed and f"{source}_smoothed" in node.input:
                ordered.append(new_nodes[source])
                placed.add(source)
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))
    return SmoothResult(dst, len(new_nodes), sum(len(v) for k, v in groups.items() if k in new_nodes), alpha)
