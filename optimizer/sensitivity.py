"""Per-node quantization sensitivity, measured: the error each quantized weight node adds on its own.

For every MatMul / Gemm / Gather with a constant weight, run the quantized model on calibration
batches with the node's input and output exposed, recompute the node in float from the same input
and the original float weight, and report ||y_quantized - y_float|| / ||y_float||. Errors that come
from upstream nodes are thereby excluded, so the ranking points at the nodes to keep in float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

SUPPORTED = ("MatMul", "Gemm", "Gather")


@dataclass(frozen=True, slots=True)
class NodeSensitivity:
    node: str
    op_type: str
    relative_error: float


def _float_op(node: onnx.NodeProto, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gather":
        gathered: np.ndarray = np.take(weight, x.astype(np.int64), axis=int(attrs.get("axis", 0)))
        return gathered
    if node.op_type == "MatMul":
        product: np.ndarray = x @ weight
        return product
    a = x.T if attrs.get("transA", 0) else x
    b = weight.T if attrs.get("transB", 0) else weight
    y: np.ndarray = float(attrs.get("alpha", 1.0)) * (a @ b)
    if bias is not None:
        y = y + float(attrs.get("beta", 1.0)) * bias
    return y


def node_sensitivity(float_path: Path, quantized_path: Path, feeds: Sequence[dict[str, np.ndarray]],
                     *, max_batches: int = 2) -> list[NodeSensitivity]:
    """Rank the weight nodes of `float_path` (a prepared model) by the relative error their quantized
    version in `quantized_path` adds, most sensitive first. Nodes not found in both graphs are skipped."""
    float_model = onnx.load(str(float_path))
    weights = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    targets = [n for n in float_model.graph.node
               if n.op_type in SUPPORTED and len(n.input) > 1
               and (n.input[0] if n.op_type == "Gather" else n.input[1]) in weights]
    quantized = onnx.load(str(quantized_path))
    produced = {o for n in quantized.graph.node for o in n.output} | {i.name for i in quantized.graph.input}
    probes = [n for n in targets if n.input[1 if n.op_type == "Gather" else 0] in produced and n.output[0] in produced]
    existing = {o.name for o in quantized.graph.output}
    names = sorted({t for n in probes for t in (n.input[1 if n.op_type == "Gather" else 0], n.output[0])} - existing)
    quantized.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # No fusions: they could swallow the tensors exposed above.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(quantized.SerializeToString(), options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    errors: dict[str, list[float]] = {n.name: [] for n in probes}
    for feed in list(feeds)[:max_batches]:
        values = dict(zip(output_names, session.run(None, feed), strict=True))
        values.update(feed)
        for node in probes:
            if node.op_type == "Gather":
                x, weight = values[node.input[1]], weights[node.input[0]]
            else:
                x, weight = values[node.input[0]], weights[node.input[1]]
            bias = weights.get(node.input[2]) if len(node.input) > 2 else None
            reference = _float_op(node, x, weight, bias)
            error = np.linalg.norm(values[node.output[0]] - reference) / max(float(np.linalg.norm(reference)), 1e-12)
            errors[node.name].append(float(error))
    ranked = [NodeSensitivity(n.name, n.op_type, float(np.mean(errors[n.name]))) for n in probes if errors[n.name]]
    return sorted(ranked, key=lambda s: s.relative_error, reverse=True)
