"""Finite numbers only: V2 JSON has no NaN or ±Inf, so the router answers none (an error the client can read,
never `null`); a variant whose result holds one has failed for that input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

_vdot = np.vdot
_isfinite = math.isfinite
NON_FINITE_HINT = ("inputs near the datatype's limit (FP32: ±3.4e38) overflow the model's arithmetic, and NaN or "
                   "±Inf in binary inputs carry through")


class NonFiniteOutput(Exception):
    """A variant answered NaN or ±Inf: a failure of that call, never an answer."""

    def __init__(self, output: str) -> None:
        super().__init__(f"output {output!r} holds NaN or ±Inf")
        self.output = output


def all_finite(array: np.ndarray[Any, Any]) -> bool:
    """True when no element of `array` is NaN or ±Inf (always, for a tensor that is not floating point)."""
    # One dot product: a·a is NaN or +Inf as soon as one element is, and costs ~0.4 µs on a small tensor against
    # ~2 µs for isfinite().all(). Large finite values can overflow the sum: the exact check settles those.
    return array.dtype.kind != "f" or _isfinite(_vdot(array, array)) or bool(np.isfinite(array).all())


def non_finite_output(outputs: Mapping[str, np.ndarray[Any, Any]]) -> str | None:
    """The name of the first output holding NaN or ±Inf, or None."""
    for name, array in outputs.items():
        if array.dtype.kind == "f" and not _isfinite(_vdot(array, array)) and not np.isfinite(array).all():
            return name
    return None
