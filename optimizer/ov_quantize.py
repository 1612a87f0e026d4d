"""OpenVINO candidates of an ONNX file: conversion, NNCF post-training INT8, NNCF weight compression, written as
an IR folder (model.xml, model.bin, modelroll.json) whose manifest carries the runtime settings of the candidate.

Imported by the build child (optimizer/ov_child.py) and the benchmark only: the worker never imports openvino
or nncf itself, so their log lines and progress bars land in the job log, not on the terminal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from modelroll.errors import InvalidInput
from modelroll.openvino_ir import XML, IrManifest, size_bytes, write_manifest
from optimizer.model_kind import model_kind
from optimizer.ov_graph import quantize_embeddings

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class OvResult:
    """What one OpenVINO step did, for the step record and the report."""

    technique: str
    folder: Path
    kind: str
    kind_why: str
    config: Mapping[str, str]
    quantized_nodes: int
    compressed_weights: int
    excluded_nodes: tuple[str, ...]
    embeddings: tuple[str, ...] = ()
    size_bytes_before: int = 0
    size_bytes_after: int = 0
    versions: Mapping[str, str] = field(default_factory=dict)


def runtime_config(options: Mapping[str, Any]) -> dict[str, str]:
    """The compile properties a recipe's OpenVINO settings stand for (empty: the runtime's defaults)."""
    config: dict[str, str] = {}
    if options.get("precision", "default") != "default":
        config["INFERENCE_PRECISION_HINT"] = str(options["precision"])
    if int(options.get("cache", -1)) >= 0:
        config["CPU_RUNTIME_CACHE_CAPACITY"] = str(int(options["cache"]))
    if int(options.get("dq", -1)) >= 0:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(int(options["dq"]))
    return config


def calibration_items(batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """One item per row (NNCF's statistics assume batch 1); with an attention_mask, each row cut to its real
    tokens, so padding does not enter the activation ranges."""
    items: list[dict[str, np.ndarray]] = []
    for batch in batches:
        rows = len(next(iter(batch.values())))
        mask = batch.get("attention_mask")
        for row in range(rows):
            item = {name: np.ascontiguousarray(array[row : row + 1]) for name, array in batch.items()}
            if mask is not None and mask.ndim == 2:
                length = max(int(mask[row].sum()), 1)
                item = {name: (np.ascontiguousarray(a[:, :length]) if a.ndim == 2 and a.shape[1] == mask.shape[1]
                               else a) for name, a in item.items()}
            items.append(item)
    return items


def versions() -> dict[str, str]:
    """The versions of openvino and nncf that build a candidate (recorded in its manifest)."""
    return {"openvino": metadata.version("openvino"), "nncf": metadata.version("nncf")}


def _nncf() -> Any:
    import nncf

    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf


def quantize_int8(model: ov.Model, items: Sequence[Mapping[str, np.ndarray]], *, kind: str, subset: int,
                  fast_bias: bool, ignored: Sequence[str] = (), skip_lookups: bool = True) -> ov.Model:
    """NNCF post-training INT8: the transformer preset (mixed, SmoothQuant) for encoders, the performance preset
    for the rest; `ignored` node names stay float; `skip_lookups` leaves Gather (embedding lookups) to
    `quantize_embeddings`."""
    nncf = _nncf()
    if not items:
        raise InvalidInput("ov-int8 needs calibration inputs and there are none: give eval data with inputs")
    types = ["Gather"] if skip_lookups else []
    scope = nncf.IgnoredScope(names=list(ignored), types=types, validate=False) if ignored or types else None
    extra: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER} if kind == "transformer" else \
        {"preset": nncf.QuantizationPreset.PERFORMANCE}
    return nncf.quantize(model, nncf.Dataset(list(items)), subset_size=min(subset, len(items)),
                         fast_bias_correction=fast_bias, ignored_scope=scope, **extra)


def compress_weights(model: ov.Model, *, mode: str, ratio: float, group: int) -> ov.Model:
    nncf = _nncf()
    modes = {"int8_asym": nncf.CompressWeightsMode.INT8_ASYM, "int8_sym": nncf.CompressWeightsMode.INT8_SYM,
             "int4_asym": nncf.CompressWeightsMode.INT4_ASYM, "int4_sym": nncf.CompressWeightsMode.INT4_SYM}
    if mode.startswith("int4"):
        return nncf.compress_weights(model, mode=modes[mode], ratio=ratio, group_size=group, all_layers=True)
    return nncf.compress_weights(model, mode=modes[mode])


def _count(model: ov.Model) -> tuple[int, int]:
    """(FakeQuantize nodes, constants stored in 8 bits or fewer) of a model."""
    low_bits = {ov.Type.u8, ov.Type.i8, ov.Type.u4, ov.Type.i4}
    fake = compressed = 0
    for node in model.get_ops():
        if node.get_type_name() == "FakeQuantize":
            fake += 1
        elif node.get_type_name() == "Constant" and node.get_output_element_type(0) in low_bits \
                and np.prod(node.get_output_shape(0)) >= 256:
            compressed += 1
    return fake, compressed


def build(technique: str, options: Mapping[str, Any], onnx_path: Path, calibration: Sequence[Mapping[str, np.ndarray]],
          out_dir: Path, *, ignored: Sequence[str] = (), recipe: str = "") -> OvResult:
    """Build the OpenVINO candidate `technique` (ov | ov-int8 | ov-weights) of `onnx_path` into `out_dir`."""
    kind = model_kind(onnx_path)
    chosen = str(options.get("kind", "auto"))
    preset = kind.kind if chosen == "auto" else chosen
    model = ov.convert_model(str(onnx_path))
    tables: list[str] = []
    if technique == "ov-int8":
        embeddings = str(options["embeddings"])
        model = quantize_int8(model, calibration_items(calibration), kind=preset, subset=int(options["subset"]),
                              fast_bias=bool(options["fast_bias"]), ignored=ignored,
                              skip_lookups=embeddings != "expand")
        if embeddings == "int8":
            tables = [f"{t.name} {list(t.shape)}" for t in quantize_embeddings(model)]
    elif technique == "ov-weights":
        model = compress_weights(model, mode=str(options["mode"]), ratio=float(options["ratio"]),
                                 group=int(options["group"]))
    elif technique != "ov":
        raise InvalidInput(f"{technique!r} is not an OpenVINO technique: accepted ov, ov-int8, ov-weights")
    fake, compressed = _count(model)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / XML), compress_to_fp16=False)
    built = versions()
    config = runtime_config(options)
    write_manifest(folder, IrManifest(runtime_version=built["openvino"], config=config,
                                      built_with={k: v for k, v in built.items() if k != "openvino"}, recipe=recipe))
    return OvResult(technique=technique, folder=folder, kind=preset,
                    kind_why=kind.why if chosen == "auto" else f"kind={chosen} (given)", config=config,
                    quantized_nodes=fake, compressed_weights=compressed, excluded_nodes=tuple(ignored),
                    embeddings=tuple(tables), size_bytes_before=Path(onnx_path).stat().st_size,
                    size_bytes_after=size_bytes(folder), versions=built)
