"""Frames between the router and a subprocess runner: 8-byte lengths, an orjson header, raw tensor bytes.

Reads take a deadline so a hung child turns into a timeout instead of a stuck thread.
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any

import numpy as np
import orjson

from router.protocol import deserialize_bytes, serialize_bytes

_LENGTHS = struct.Struct("<II")
Tensors = dict[str, np.ndarray[Any, Any]]


class FrameTimeout(Exception):
    pass


class FrameClosed(Exception):
    pass


def pack(meta: dict[str, Any], tensors: Tensors | None = None) -> bytes:
    blobs: list[bytes] = []
    if tensors is not None:
        described = []
        for name, array in tensors.items():
            if array.dtype.kind in "OSU":
                blob, dtype = serialize_bytes(array), "BYTES"
            else:
                blob, dtype = np.ascontiguousarray(array).tobytes(), array.dtype.str
            described.append({"name": name, "dtype": dtype, "shape": list(array.shape), "nbytes": len(blob)})
            blobs.append(blob)
        meta = {**meta, "tensors": described}
    header = orjson.dumps(meta)
    data = b"".join(blobs)
    return _LENGTHS.pack(len(header), len(data)) + header + data


def unpack_tensors(meta: dict[str, Any], data: bytes) -> Tensors:
    out: Tensors = {}
    view = memoryview(data)
    offset = 0
    for t in meta.get("tensors", ()):
        chunk = view[offset:offset + t["nbytes"]]
        offset += t["nbytes"]
        shape = tuple(t["shape"])
        if t["dtype"] == "BYTES":
            count = int(np.prod(shape)) if shape else 1
            out[t["name"]] = deserialize_bytes(t["name"], chunk, count).reshape(shape)
        else:
            out[t["name"]] = np.frombuffer(chunk, dtype=np.dtype(t["dtype"])).reshape(shape)
    return out


def write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        try:
            written = os.write(fd, view)
        except (BrokenPipeError, OSError) as exc:
            raise FrameClosed(f"pipe closed while writing: {exc}") from exc
        view = view[written:]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise FrameTimeout("no answer before the deadline")
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise FrameClosed("the other side closed the pipe")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def read(fd: int, deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    header_len, data_len = _LENGTHS.unpack(_read_exact(fd, _LENGTHS.size, deadline))
    meta = orjson.loads(_read_exact(fd, header_len, deadline))
    data = _read_exact(fd, data_len, deadline) if data_len else b""
    return meta, data
