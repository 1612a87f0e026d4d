"""What kind of network an ONNX file holds — transformer encoder, CNN or MLP — read from its operators.

The kind picks quantization presets (NNCF's transformer preset for encoders, the performance preset for the
rest) and the default techniques; `ModelKind.why` says what was seen, for the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

KINDS = ("transformer", "cnn", "mlp")
_NORMS = {"LayerNormalization", "SkipLayerNormalization", "ReduceMean"}
_CONVS = {"Conv", "ConvTranspose"}
_DENSE = {"MatMul", "Gemm"}


@dataclass(frozen=True, slots=True)
class ModelKind:
    kind: str  # one of KINDS
    why: str


def _ops(model: onnx.ModelProto) -> Counter[str]:
    counts: Counter[str] = Counter()
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            counts[node.op_type] += 1
            graphs.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
    return counts


def model_kind(path: Path) -> ModelKind:
    """Attention (Softmax between matrix products, with layer norms) → transformer; convolutions → cnn; matrix
    products alone → mlp (anything else is treated as an mlp: per-tensor presets suit it)."""
    ops = _ops(onnx.load(str(path), load_external_data=False))
    dense = sum(ops[op] for op in _DENSE)
    if ops["Softmax"] and dense >= 4 and (ops.keys() & _NORMS or ops["Attention"]):
        return ModelKind("transformer", f"{ops['Softmax']} softmax(es) between {dense} matrix products, "
                                        "with layer norms: a transformer encoder")
    if any(ops[op] for op in _CONVS):
        return ModelKind("cnn", f"{sum(ops[op] for op in _CONVS)} convolution(s): a convolutional network")
    return ModelKind("mlp", f"{dense} matrix product(s), no convolution or attention: a multi-layer perceptron")


def default_techniques(kind: ModelKind, *, has_torch: bool, openvino: bool) -> tuple[tuple[str, ...], str]:
    """The recipes to try when none is given, for this kind of model and the runtimes installed, and why."""
    ov = ("ov-int8",) if openvino else ()
    if kind.kind == "cnn":
        return ("int8-static", *ov), (f"{kind.why}: static INT8 (activations calibrated), since dynamic INT8 "
                                      "leaves convolutions in float")
    if kind.kind == "transformer":
        return ("int8:per_channel", *ov, *(("ov-weights",) if openvino else ())), (
            f"{kind.why}: dynamic INT8 per channel, OpenVINO post-training INT8 and weight-only INT8 (the most "
            "faithful)")
    torch_steps = ("prune:0.5,int8",) if has_torch else ()
    return ("int8", "int8-static", *ov, *torch_steps), f"{kind.why}: dynamic and static INT8" + (
        ", and structured pruning (its torch model is stored)" if has_torch else "")
