"""Tensor datatypes of the Open Inference Protocol and a model's signature (inputs, outputs).

A `Signature` is built once per variant when it is loaded; the codec checks every request
against it before the model runs, so a wrong name, datatype or shape is a 400, not a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

# V2 datatype -> numpy dtype (BYTES are object arrays of `bytes`).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
ACCEPTED_DATATYPES = ", ".join(DATATYPES)

# onnxruntime's type strings -> V2 datatype.
ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_KIND_BY_DTYPE = {np.dtype(object): "BYTES"}
DATATYPE_OF_DTYPE: dict[np.dtype[Any], str] = {dt: name for name, dt in DATATYPES.items()} | _KIND_BY_DTYPE


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """V2 datatype of a numpy array (unicode and bytes arrays are BYTES)."""
    found = DATATYPE_OF_DTYPE.get(array.dtype)
    if found is not None:
        return found
    if array.dtype.kind in "USO":
        return "BYTES"
    raise TypeError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor of a signature; -1 in `shape` is a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Any) -> TensorSpec:
        return cls(name=str(data["name"]), datatype=str(data["datatype"]),
                   shape=tuple(int(d) for d in data["shape"]))


def _dims(shape: Iterable[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


@dataclass(frozen=True, slots=True)
class Signature:
    """Inputs and outputs of a model, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    output_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_by_name", {t.name: t for t in self.inputs})
        object.__setattr__(self, "output_by_name", {t.name: t for t in self.outputs})

    @classmethod
    def from_onnx_session(cls, session: Any) -> Signature:
        def specs(args: Sequence[Any]) -> tuple[TensorSpec, ...]:
            out = []
            for arg in args:
                if arg.type not in ONNX_TYPES:
                    raise ValueError(f"tensor {arg.name!r} has type {arg.type}, which the router cannot serve")
                out.append(TensorSpec(arg.name, ONNX_TYPES[arg.type], _dims(arg.shape)))
            return tuple(out)

        return cls(specs(session.get_inputs()), specs(session.get_outputs()))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, data: Any) -> Signature:
        return cls(tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in data["outputs"]))

    def compatible_with(self, other: Signature) -> str | None:
        """None when `other` accepts the same requests and answers the same outputs, else why not."""
        mine = {t.name: (t.datatype, len(t.shape)) for t in self.inputs}
        theirs = {t.name: (t.datatype, len(t.shape)) for t in other.inputs}
        if mine != theirs:
            return f"inputs differ: {sorted(mine.items())} vs {sorted(theirs.items())}"
        mine_out = {t.name: t.datatype for t in self.outputs}
        theirs_out = {t.name: t.datatype for t in other.outputs}
        if mine_out != theirs_out:
            return f"outputs differ: {sorted(mine_out.items())} vs {sorted(theirs_out.items())}"
        return None


def metadata_bytes(model: str, versions: Sequence[str], signature: Signature, platform: str) -> bytes:
    """The model metadata answer of GET /v2/models/{name}, computed once per split change."""
    return orjson.dumps({
        "name": model, "versions": list(versions), "platform": platform,
        "inputs": [t.to_dict() for t in signature.inputs],
        "outputs": [t.to_dict() for t in signature.outputs],
    })
