"""Open Inference Protocol (V2) codec: JSON and binary tensors in, JSON or binary tensors out.

Each request is checked against the model's `Signature` (names, datatypes, shapes, sizes, and
JSON values: numbers its datatype holds, true/false for BOOL only) before anything runs; every
problem raises `InvalidInput` with what was wrong and what is accepted. JSON goes through orjson;
binary tensors become numpy views without copying.
"""

from __future__ import annotations

import array as array_module
import struct
from typing import Any

import numpy as np
import orjson

from modelroll.errors import InvalidInput
from router.finite import all_finite
from router.json_values import cast, holds_bool, may_hold_booleans, overflow
from router.tensors import ACCEPTED_DATATYPES, DATATYPES, Signature, TensorSpec, datatype_of

_INT_KINDS = "iu"
_FLOAT_CODES = {"FP16": "f", "FP32": "f", "FP64": "d"}  # array module type codes (FP16 is converted after)
_NUMPY_OPT = orjson.OPT_SERIALIZE_NUMPY
_LEN = struct.Struct("<I")


class InferRequest:
    """A decoded, validated inference request."""

    __slots__ = ("batch_size", "binary_default", "id", "inputs", "outputs")

    def __init__(self, id: str | None, inputs: dict[str, np.ndarray[Any, Any]],
                 outputs: list[tuple[str, bool]] | None, binary_default: bool, batch_size: int) -> None:
        self.id = id
        self.inputs = inputs
        self.outputs = outputs  # requested (name, binary) or None for all outputs
        self.binary_default = binary_default
        self.batch_size = batch_size


def _fail(message: str) -> InvalidInput:
    return InvalidInput(message)


def _check_shape(spec: TensorSpec, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(type(d) is int and d >= 0 for d in raw):
        raise _fail(f"input {spec.name!r}: shape must be a list of non-negative integers, got {raw!r}")
    if len(raw) != len(spec.shape):
        raise _fail(f"input {spec.name!r}: shape {raw} has {len(raw)} dimensions, the model expects "
                    f"{len(spec.shape)} ({list(spec.shape)}, -1 = any size)")
    for got, want in zip(raw, spec.shape, strict=True):
        if want != -1 and got != want:
            raise _fail(f"input {spec.name!r}: shape {raw} does not match the model's {list(spec.shape)} "
                        "(-1 = any size)")
    return tuple(raw)


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def serialize_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """BYTES tensor in the binary extension's layout: 4-byte little-endian length, then the bytes."""
    parts = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(name: str, buffer: memoryview, count: int) -> np.ndarray[Any, Any]:
    items: list[bytes] = []
    offset, end = 0, len(buffer)
    while offset < end:
        if offset + 4 > end:
            raise _fail(f"input {name!r}: BYTES data is cut short inside an element's 4-byte length")
        (size,) = _LEN.unpack_from(buffer, offset)
        offset += 4
        if offset + size > end:
            raise _fail(f"input {name!r}: BYTES element of {size} bytes runs past binary_data_size")
        items.append(bytes(buffer[offset:offset + size]))
        offset += size
    if len(items) != count:
        raise _fail(f"input {name!r}: BYTES data holds {len(items)} elements, the shape needs {count}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def _flatten_strings(name: str, data: Any, out: list[bytes]) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten_strings(name, item, out)
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        else:
            raise _fail(f"input {name!r}: BYTES data must be strings, got {type(item).__name__}")


def _from_json(spec: TensorSpec, data: Any, shape: tuple[int, ...], booleans: bool) -> np.ndarray[Any, Any]:
    """`booleans`: whether the request's JSON may hold true/false (see `may_hold_booleans`)."""
    count = _count(shape)
    if not isinstance(data, list):
        raise _fail(f"input {spec.name!r}: data must be a list (flat or nested), got {type(data).__name__}")
    if spec.datatype == "BYTES":
        items: list[bytes] = []
        _flatten_strings(spec.name, data, items)
        if len(items) != count:
            raise _fail(f"input {spec.name!r}: data has {len(items)} elements, shape {list(shape)} needs {count}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    if booleans and spec.datatype != "BOOL" and holds_bool(data):
        expected = "integers" if spec.dtype.kind in _INT_KINDS else "numbers"
        raise _fail(f"input {spec.name!r}: {spec.datatype} data must be {expected}, got true/false")
    float_code = _FLOAT_CODES.get(spec.datatype)
    if float_code is not None and len(data) == count:
        # Flat float data, the common case: array.array converts in C and refuses anything but numbers
        # (strings, null, nested lists), which then take the general path below for their message.
        try:
            flat = np.frombuffer(array_module.array(float_code, data), dtype=float_code)
        except (TypeError, OverflowError):
            pass
        else:
            converted = flat if flat.dtype == spec.dtype else cast(flat, spec.dtype)
            if float_code == "f" and not all_finite(converted):  # 1e39 is no FP32 value (orjson refuses > FP64)
                raise overflow(spec, np.asarray(data), converted)
            return converted.reshape(shape)
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise _fail(f"input {spec.name!r}: data is ragged or mixes types; give {count} "
                    f"{spec.datatype} values") from None
    if array.size != count:
        raise _fail(f"input {spec.name!r}: data has {array.size} elements, shape {list(shape)} needs {count}")
    if count == 0:
        return np.zeros(shape, dtype=spec.dtype)
    kind = array.dtype.kind
    want = spec.dtype.kind
    if want == "b":
        ok = kind == "b"
    elif want in _INT_KINDS:
        ok = kind in _INT_KINDS
        if ok:
            info = np.iinfo(spec.dtype)
            if array.min() < info.min or array.max() > info.max:
                raise _fail(f"input {spec.name!r}: values must fit {spec.datatype} "
                            f"[{info.min}, {info.max}], got [{array.min()}, {array.max()}]")
    else:
        ok = kind in "iuf"
    if not ok:
        expected = {"b": "true/false", "i": "integers", "u": "integers", "f": "numbers"}[want]
        raise _fail(f"input {spec.name!r}: {spec.datatype} data must be {expected}, got {array.dtype.name} values")
    if want != "f" or spec.datatype == "FP64":
        return array.astype(spec.dtype, copy=False).reshape(shape)
    converted = cast(array, spec.dtype)
    if not all_finite(converted):
        raise overflow(spec, array, converted)
    return converted.reshape(shape)


def _from_binary(spec: TensorSpec, buffer: memoryview, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    count = _count(shape)
    if spec.datatype == "BYTES":
        return deserialize_bytes(spec.name, buffer, count).reshape(shape)
    expected = count * spec.dtype.itemsize
    if len(buffer) != expected:
        raise _fail(f"input {spec.name!r}: binary_data_size is {len(buffer)} bytes, shape {list(shape)} of "
                    f"{spec.datatype} needs {expected}")
    return np.frombuffer(buffer, dtype=spec.dtype).reshape(shape)


def _parse_header(body: bytes, header_length: int | None) -> tuple[Any, memoryview]:
    view = memoryview(body)
    if header_length is None:
        json_part, binary = view, view[len(view):]
    else:
        if not 0 < header_length <= len(view):
            raise _fail(f"Inference-Header-Content-Length is {header_length}, the body has {len(view)} bytes")
        json_part, binary = view[:header_length], view[header_length:]
    try:
        request = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"the request body is not valid JSON ({exc}); send an inference request object") from None
    if not isinstance(request, dict):
        raise _fail(f"the request must be a JSON object with 'inputs', got {type(request).__name__}")
    return request, binary


def _not_an_object(where: str, raw: Any) -> InvalidInput:
    return _fail(f"{where}'parameters' must be an object, got {type(raw).__name__}")


def _parse_outputs(raw: Any, signature: Signature) -> list[tuple[str, bool | None]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _fail(f"'outputs' must be a list of {{name, parameters}}, got {type(raw).__name__}")
    wanted: list[tuple[str, bool | None]] = []
    for entry in raw:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name not in signature.output_by_name:
            known = list(signature.output_by_name)
            raise _fail(f"requested output {name!r} is unknown; the model's outputs are {known}")
        params = entry.get("parameters")
        if params is not None and type(params) is not dict:
            raise _not_an_object(f"output {name!r}: ", params)
        binary = params.get("binary_data") if params else None
        if binary is not None and not isinstance(binary, bool):
            raise _fail(f"output {name!r}: parameters.binary_data must be true or false, got {binary!r}")
        wanted.append((name, binary))
    return wanted


def decode_request(body: bytes, header_length: int | None, signature: Signature) -> InferRequest:
    """Decode and validate one inference request against the model's signature."""
    request, binary = _parse_header(body, header_length)
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _fail("the request needs 'inputs': a non-empty list of {name, datatype, shape, data}")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _fail(f"'id' must be a string, got {type(request_id).__name__}")
    params = request.get("parameters")
    if params is None:
        params = {}
    elif type(params) is not dict:
        raise _not_an_object("", params)
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise _fail(f"parameters.binary_data_output must be true or false, got {binary_default!r}")
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    booleans: bool | None = None  # whether the JSON may hold true/false, looked at once, when first needed
    for entry in raw_inputs:
        if not isinstance(entry, dict):
            raise _fail("each input must be an object {name, datatype, shape, data}")
        name = entry.get("name")
        spec = signature.input_by_name.get(name) if isinstance(name, str) else None
        if spec is None:
            raise _fail(f"input {name!r} is unknown; the model's inputs are {list(signature.input_by_name)}")
        assert isinstance(name, str)
        if name in inputs:
            raise _fail(f"input {name!r} is given twice")
        datatype = entry.get("datatype")
        if datatype != spec.datatype:
            hint = "" if datatype in DATATYPES else f" (accepted datatypes: {ACCEPTED_DATATYPES})"
            raise _fail(f"input {name!r}: datatype {datatype!r} does not match the model's {spec.datatype}{hint}")
        shape = _check_shape(spec, entry.get("shape"))
        in_params = entry.get("parameters")
        if in_params is not None and type(in_params) is not dict:
            raise _not_an_object(f"input {name!r}: ", in_params)
        size = in_params.get("binary_data_size") if in_params else None
        if size is not None:
            if type(size) is not int or size < 0:
                raise _fail(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
            if header_length is None:
                raise _fail(f"input {name!r} has binary_data_size but the request has no "
                            "Inference-Header-Content-Length header")
            if offset + size > len(binary):
                raise _fail(f"input {name!r}: binary_data_size {size} runs past the end of the body")
            inputs[name] = _from_binary(spec, binary[offset:offset + size], shape)
            offset += size
        elif "data" in entry:
            if booleans is None and spec.datatype not in ("BOOL", "BYTES"):
                booleans = may_hold_booleans(body, len(body) if header_length is None else header_length)
            inputs[name] = _from_json(spec, entry["data"], shape, bool(booleans))
        else:
            raise _fail(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise _fail(f"the body has {len(binary) - offset} binary bytes that no input's binary_data_size claims")
    missing = [n for n in signature.input_by_name if n not in inputs]
    if missing:
        raise _fail(f"missing input(s) {missing}; the model needs {list(signature.input_by_name)}")
    outputs = _parse_outputs(request.get("outputs"), signature)
    first = next(iter(inputs.values()))
    batch_size = int(first.shape[0]) if first.ndim else 1
    resolved = None if outputs is None else [(n, binary_default if b is None else b) for n, b in outputs]
    return InferRequest(request_id, inputs, resolved, binary_default, batch_size)


def _json_data(array: np.ndarray[Any, Any]) -> Any:
    if array.dtype.kind in "OSU":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    return np.ascontiguousarray(array).reshape(-1)


def _binary_data(array: np.ndarray[Any, Any]) -> bytes:
    if array.dtype.kind in "OSU":
        return serialize_bytes(array)
    return np.ascontiguousarray(array).tobytes()


def encode_response(model: str, version: str, request_id: str, outputs: dict[str, np.ndarray[Any, Any]],
                    request: InferRequest) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, its JSON header's length."""
    chosen = [(name, request.binary_default) for name in outputs] if request.outputs is None else request.outputs
    entries = []
    blobs: list[bytes] = []
    for name, binary in chosen:
        array = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary:
            blob = _binary_data(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array)
        entries.append(entry)
    header = orjson.dumps({"model_name": model, "model_version": version, "id": request_id, "outputs": entries},
                          option=_NUMPY_OPT)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
