"""Rewrites of an OpenVINO model's graph that keep an embedding table in INT8 where the runtime would widen it.

A lookup `Gather(table, ids)` of a float table becomes `Gather(table_u8, ids)` followed by the dequantization of the
gathered rows only (per-row scale and zero point, gathered with them), so the table stays one byte per value in
memory: the CPU plugin folds a constant dequantization in front of a Gather back to f32 when the model also has
quantized activations (all-MiniLM-L6-v2: +45 MiB). Exact for the rows it reads: the same numbers as dequantizing
the whole table first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import openvino as ov
from openvino import opset13 as ops

MIN_TABLE_VALUES = 4096  # smaller tables (token types, tiny position tables) are not worth a dequantization


@dataclass(frozen=True, slots=True)
class EmbeddingTable:
    name: str
    shape: tuple[int, ...]
    bytes_before: int
    bytes_after: int


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric per-row uint8: (q, scale, zero_point) with table ≈ (q - zero_point) * scale, rows in [min, max]."""
    low = np.minimum(table.min(axis=1, keepdims=True), 0.0)
    high = np.maximum(table.max(axis=1, keepdims=True), 0.0)
    scale = np.where(high > low, (high - low) / 255.0, 1.0).astype(np.float32)
    zero_point = np.clip(np.round(-low / scale), 0, 255).astype(np.uint8)
    q = np.clip(np.round(table / scale) + zero_point, 0, 255).astype(np.uint8)
    return q, scale, zero_point


def _axis(node: Any) -> int | None:
    source = node.input_value(2).get_node()
    if source.get_type_name() != "Constant":
        return None
    return int(np.asarray(source.get_data()).reshape(-1)[0])


def quantize_embeddings(model: ov.Model) -> list[EmbeddingTable]:
    """Rewrite every lookup in a float constant table of 2 dimensions (at least MIN_TABLE_VALUES values, gathered
    along axis 0 with no batch dims) as an INT8 lookup followed by a dequantization of the rows read; in place."""
    done: list[EmbeddingTable] = []
    zero = ops.constant(np.int64(0))
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Gather" or _axis(node) != 0 or int(node.get_attributes().get("batch_dims", 0)):
            continue
        table_node = node.input_value(0).get_node()
        if table_node.get_type_name() != "Constant" or table_node.get_output_element_type(0) != ov.Type.f32:
            continue
        table = np.asarray(table_node.get_data())
        if table.ndim != 2 or table.size < MIN_TABLE_VALUES:
            continue
        q, scale, zero_point = quantize_rows(table)
        ids = node.input_value(1)
        rows = ops.convert(ops.gather(ops.constant(q), ids, zero), ov.Type.f32)
        points = ops.convert(ops.gather(ops.constant(zero_point), ids, zero), ov.Type.f32)
        scales = ops.gather(ops.constant(scale), ids, zero)
        value = ops.multiply(ops.subtract(rows, points), scales)
        value.set_friendly_name(node.get_friendly_name())
        node.output(0).replace(value.output(0))
        done.append(EmbeddingTable(node.get_friendly_name(), tuple(table.shape), table.nbytes,
                                   q.nbytes + scale.nbytes + zero_point.nbytes))
    if done:
        model.validate_nodes_and_infer_types()
    return done
