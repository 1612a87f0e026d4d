"""INT8 quantization of an ONNX file with onnxruntime: dynamic (MatMul, Gather) and static QDQ calibrated on samples.

Both take an input path and an output path and return a `QuantizeResult` describing what was done;
`nodes_to_exclude` keeps named nodes in float (the accuracy back-off uses it).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

from modelroll.errors import InvalidInput
from optimizer.export import gemm_to_matmul
from optimizer.sources import check_onnx

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "Gather")
INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "ConvInteger", "QLinearConv",
               "MatMulIntegerToFloat", "QGemm")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QuantizeResult:
    """What a quantization did: which method, how many nodes became INT8, which stayed float."""

    method: str  # "int8-dynamic" | "int8-static"
    output_path: Path
    per_channel: bool
    calibration_method: str | None
    quantized_nodes: int
    excluded_nodes: tuple[str, ...]
    int8_initializers: int
    size_bytes_before: int
    size_bytes_after: int


class ArrayCalibrationReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds a fixed list of input batches (dicts keyed by ONNX input name) to the calibrator once."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def weight_nodes(path: Path) -> list[str]:
    """Names of nodes that carry a constant weight (MatMul/Gemm/Conv/Gather with an initializer input)."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    # A Gather's weight is its data (input 0); a Gather of constant indices from a tensor is a shape op.
    return [n.name for n in model.graph.node if n.op_type in WEIGHT_OPS
            and (n.input[0] in initializers if n.op_type == "Gather" else any(i in initializers for i in n.input))]


def _name_nodes(model: onnx.ModelProto) -> None:
    # Exclusion and sensitivity work by node name, so every node needs a unique one.
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


def prepare(src: Path, dst: Path) -> Path:
    """Validate, name every node and run ORT's quantization pre-processing; quantize `dst` with pre_process=False
    so that node names (for nodes_to_exclude and node_sensitivity) stay the same across tries."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".modelroll-q-", dir=dst.parent) as work:
        prepared = _prepare(Path(src), Path(work), pre_process=True)
        onnx.save(onnx.load(str(prepared)), str(dst))
    return dst


def _prepare(src: Path, work: Path, *, pre_process: bool) -> Path:
    info = check_onnx(src)
    model = onnx.load(str(info.path))
    _name_nodes(model)
    named = work / "named.onnx"
    onnx.save(model, str(named))
    if not pre_process:
        return named
    prepared = work / "prepared.onnx"
    # Shape inference + ORT's basic graph optimizations; quantization then sees fused, shaped nodes.
    # Symbolic shape inference gives up on some exports (e.g. BERT's Min(512, seq) position slice):
    # pre-process without it then, and quantize the plain graph if even that fails (it only helps).
    try:
        inferred = _symbolic_shapes(model)
    except Exception as exc:  # only means "no symbolic shapes"
        log.info("symbolic shape inference failed: %s", exc)
        inferred = None
    try:
        quant_pre_process(inferred if inferred is not None else str(named), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # any failure here only means "no pre-processing"
        log.info("quant_pre_process failed: %s", exc)
        return named
    # Pre-processing fuses MatMul+Add into Gemm, which quantize_dynamic would split again under new
    # names (nodes_to_exclude would then miss); split it here once, so names stay stable.
    model = onnx.load(str(prepared))
    if gemm_to_matmul(model):
        _name_nodes(model)
        onnx.save(model, str(prepared))
    return prepared


def _symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """`SymbolicShapeInference.infer_shapes` without its dump: when it gives up, it saves the model as
    sym_shape_infer_temp.onnx + a uuid1-named .data file of every weight into the process's working directory."""
    infer = SymbolicShapeInference(2**31 - 1, False, False, 0)
    infer._preprocess(model)
    complete = False
    while infer.run_:
        complete = infer._infer_impl()
    infer._update_output_from_vi()
    if not complete:
        log.info("symbolic shape inference left some shapes unknown; pre-processing without it")
        return None
    inferred: onnx.ModelProto = infer.out_mp_
    return inferred


def _check_excluded(prepared: Path, nodes_to_exclude: Sequence[str]) -> tuple[str, ...]:
    names = {n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node}
    unknown = sorted(set(nodes_to_exclude) - names)
    if unknown:
        raise InvalidInput(f"nodes_to_exclude names unknown node(s) {unknown[:5]}: use names from weight_nodes()")
    return tuple(nodes_to_exclude)


def _summarize(method: str, src: Path, dst: Path, per_channel: bool, calibration: str | None,
               excluded: tuple[str, ...]) -> QuantizeResult:
    onnx.checker.check_model(str(dst))
    model = onnx.load(str(dst))
    int8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    int8_weights = {t.name for t in model.graph.initializer if t.data_type in int8}
    # QDQ: a weight op is quantized when one of its inputs is a DequantizeLinear of an INT8 initializer.
    dequantized_weights = {n.output[0] for n in model.graph.node
                           if n.op_type == "DequantizeLinear" and n.input[0] in int8_weights}
    quantized = sum(
        1 for n in model.graph.node
        if n.op_type in INTEGER_OPS
        or (n.op_type in WEIGHT_OPS and any(i in dequantized_weights or i in int8_weights for i in n.input))
    )
    return QuantizeResult(
        method=method, output_path=dst, per_channel=per_channel, calibration_method=calibration,
        quantized_nodes=quantized, excluded_nodes=excluded,
        int8_initializers=len(int8_weights),
        size_bytes_before=src.stat().st_size, size_bytes_after=dst.stat().st_size,
    )


def quantize_int8_dynamic(src: Path, dst: Path, *, per_channel: bool = False,
                          nodes_to_exclude: Sequence[str] = (), pre_process: bool = True) -> QuantizeResult:
    """Dynamic INT8: weights of MatMul (and embedding Gathers) stored as INT8, activations quantized at run time."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".modelroll-q-", dir=dst.parent) as work:
        prepared = _prepare(src, Path(work), pre_process=pre_process)
        excluded = _check_excluded(prepared, nodes_to_exclude)
        quantize_dynamic(
            prepared, dst, per_channel=per_channel, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gather"], nodes_to_exclude=list(excluded) or None,
            extra_options={"MatMulConstBOnly": True},
        )
    return _summarize("int8-dynamic", src, dst, per_channel, None, excluded)


def quantize_int8_static(src: Path, dst: Path, calibration: Sequence[dict[str, np.ndarray]], *,
                         method: str = "minmax", per_channel: bool = True,
                         nodes_to_exclude: Sequence[str] = (), pre_process: bool = True,
                         activation_type: str = "quint8") -> QuantizeResult:
    """Static INT8 in QDQ format: activation ranges calibrated on `calibration` batches (MinMax/Entropy/Percentile)."""
    src, dst = Path(src), Path(dst)
    if method not in CALIBRATION_METHODS:
        raise InvalidInput(f"unknown calibration method {method!r}: accepted {sorted(CALIBRATION_METHODS)}")
    if activation_type not in ("quint8", "qint8"):
        raise InvalidInput(f"activation_type must be 'quint8' or 'qint8', got {activation_type!r}")
    if not calibration:
        raise InvalidInput("static quantization needs calibration inputs: give at least one batch")
    shapes = {tuple((k, v.shape[1:]) for k, v in sorted(feed.items())) for feed in calibration}
    if method != "minmax" and len(shapes) > 1:
        raise InvalidInput(f"{method} calibration collects histograms and needs calibration batches of one shape "
                           f"(except the batch axis), got {len(shapes)} shapes: pad them alike or use minmax")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".modelroll-q-", dir=dst.parent) as work:
        prepared = _prepare(src, Path(work), pre_process=pre_process)
        excluded = _check_excluded(prepared, nodes_to_exclude)
        quantize_static(
            prepared, dst, ArrayCalibrationReader(calibration), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm", "Conv", "Gather"], per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activation_type == "quint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=list(excluded) or None,
            calibrate_method=CALIBRATION_METHODS[method],
            calibration_cache_path=None,
            extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": activation_type == "qint8",
                           "CalibTensorRangeSymmetric": False, "CalibMovingAverage": False},
        )
    return _summarize("int8-static", src, dst, per_channel, method, excluded)
