"""The finite-value check the router applies to JSON inputs and to every variant's result."""

from __future__ import annotations

import numpy as np
import pytest

from router.finite import all_finite, non_finite_output


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_one_nan_or_inf_anywhere_is_found(dtype: type) -> None:
    for size in range(1, 70):  # past the SIMD widths of the dot product's kernels, tails included
        for bad in (np.nan, np.inf, -np.inf):
            for at in range(size):
                flat = np.ones(size, dtype)
                flat[at] = bad
                assert not all_finite(flat), (size, bad, at)
                assert not all_finite(flat.reshape(1, size))
                assert not all_finite(np.asfortranarray(np.stack([flat, flat], axis=1)))


def test_large_finite_values_are_finite_though_their_squares_overflow() -> None:
    assert all_finite(np.full((32, 10), 3e38, np.float32))
    assert all_finite(np.array([-3.4028235e38, 3.4028235e38], np.float32))
    assert all_finite(np.full(7, 60000.0, np.float16))
    assert all_finite(np.array([1e300, -1e300]))
    assert all_finite(np.zeros((0, 10), np.float32))
    assert all_finite(np.array([2**62, -(2**62)], np.int64))  # not floating point: nothing to look at


def test_the_first_output_holding_one_is_named() -> None:
    good = np.ones((2, 3), np.float32)
    assert non_finite_output({"a": good, "b": np.array([b"x"], dtype=object)}) is None
    assert non_finite_output({"a": good, "b": np.array([[1.0, np.nan]], np.float32)}) == "b"
