"""What a JSON tensor value may be: a number its datatype holds (FP16/FP32 finite and in range), true/false for BOOL
only. Used by the V2 codec (router/protocol.py) on every JSON request, hence the cheap looks before the exact ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelroll.errors import InvalidInput
from router.tensors import TensorSpec

_LITERALS = ((b"r", b"true", 1), (b"l", b"false", 2))  # (a letter of the literal, the literal, where it is in it)


def may_hold_booleans(body: bytes, end: int) -> bool:
    """False when the JSON text `body[:end]` holds no `true` or `false` literal.

    Looks for the 'r' of true and the 'l' of false with memchr: no JSON number has those letters, and of V2's keys
    only "parameters" and the binary extension's have an 'r'. Checking every value's type instead costs ~19 ns a value
    (40 µs for a batch of 32 × 64), and `find(b"true")` is as slow on digits.
    """
    for letter, word, offset in _LITERALS:
        at = body.find(letter, 0, end)
        seen = 0
        while at >= 0:
            if at >= offset and body[at - offset:at - offset + len(word)] == word:
                return True
            seen += 1
            if seen > 32:  # text full of them (strings, BYTES data): leave it to the exact check
                return True
            at = body.find(letter, at + 1, end)
    return False


def holds_bool(data: list[Any]) -> bool:
    types = set(map(type, data))
    if bool in types:
        return True
    return list in types and any(holds_bool(item) for item in data if type(item) is list)


def overflow(spec: TensorSpec, values: np.ndarray[Any, Any], converted: np.ndarray[Any, Any]) -> InvalidInput:
    limit = float(np.finfo(spec.dtype).max)
    bad = float(values.reshape(-1)[int(np.flatnonzero(~np.isfinite(converted.reshape(-1)))[0])])
    return InvalidInput(f"input {spec.name!r}: values must fit {spec.datatype} [{-limit:.8g}, {limit:.8g}], "
                        f"got {bad!r}")


def cast(array: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    with np.errstate(over="ignore"):  # a value the datatype cannot hold becomes ±Inf, refused by the caller
        return array.astype(dtype, copy=False)
