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
