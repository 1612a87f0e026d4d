"""The cheap look for JSON booleans never misses one: a request it clears holds no true/false anywhere."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from router.json_values import may_hold_booleans

_SCALARS = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=12), st.none())
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=6)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=40)


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    return False


@settings(max_examples=400, derandomize=True)
@given(_JSON)
def test_a_document_with_a_boolean_is_never_cleared(value: Any) -> None:
    body = orjson.dumps(value)
    if _has_bool(value):
        assert may_hold_booleans(body, len(body))


def test_plain_v2_requests_are_cleared_by_two_memchr_calls() -> None:
    body = orjson.dumps({"id": "a-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                                   "data": [0.25, -1.5e-07, 3.0e38] * 21 + [0.0]}]})
    assert not may_hold_booleans(body, len(body))
    header = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                       "parameters": {"binary_data_size": 256}}]})
    assert not may_hold_booleans(header + b"true" * 64, len(header))  # only the JSON part is looked at
