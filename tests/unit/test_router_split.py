"""Sticky weighted split: stable across processes, close to the weights, monotone as the candidate grows."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from router.breaker import Breaker
from router.split import BUCKETS, Split, bucket_of


def test_bucket_is_the_same_in_another_process() -> None:
    keys = [f"user-{i}" for i in range(50)] + ["", "é", "x" * 300]
    here = [bucket_of("digits", k) for k in keys]
    code = ("import sys, json; from router.split import bucket_of; "
            "print(json.dumps([bucket_of('digits', k) for k in json.loads(sys.stdin.read())]))")
    import json

    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(keys), capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert json.loads(out.stdout) == here
    assert all(0 <= b < BUCKETS for b in here)


def test_distribution_over_ten_thousand_keys_follows_the_weights() -> None:
    split = Split({"baseline": 75.0, "int8": 25.0}, "baseline")
    counts = Counter(split.choose("digits", f"key-{i}") for i in range(10_000))
    # Binomial sd at n=10000, p=0.25 is ~43; 4 sd is a tolerance that a real bias would still break.
    assert abs(counts["int8"] - 2500) < 175, counts
    three = Split({"baseline": 50.0, "a": 30.0, "b": 20.0}, "baseline")
    counts = Counter(three.choose("m", f"k{i}") for i in range(10_000))
    assert abs(counts["a"] - 3000) < 190 and abs(counts["b"] - 2000) < 170, counts


def test_requests_without_a_key_are_spread_by_weight() -> None:
    split = Split({"baseline": 90.0, "int8": 10.0}, "baseline")
    counts = Counter(split.choose("digits", None) for _ in range(10_000))
    assert abs(counts["int8"] - 1000) < 130, counts


def test_zero_weight_variant_never_chosen_and_single_variant_always() -> None:
    split = Split({"baseline": 100.0, "int8": 0.0}, "baseline")
    assert {split.choose("m", str(i)) for i in range(2000)} == {"baseline"}
    promoted = Split({"baseline": 0.0, "int8": 100.0}, "baseline")
    assert {promoted.choose("m", str(i)) for i in range(2000)} == {"int8"}


@settings(max_examples=60, deadline=None)
@given(low=st.floats(min_value=0.0, max_value=100.0), high=st.floats(min_value=0.0, max_value=100.0))
def test_raising_the_candidate_weight_only_moves_keys_to_the_candidate(low: float, high: float) -> None:
    low, high = sorted((low, high))
    before = Split({"baseline": 100.0 - low, "int8": low}, "baseline")
    after = Split({"baseline": 100.0 - high, "int8": high}, "baseline")
    for bucket in range(0, BUCKETS, 7):
        if before.variant_for_bucket(bucket) == "int8":
            assert after.variant_for_bucket(bucket) == "int8"


def test_same_key_stays_on_candidate_through_every_default_step() -> None:
    keys = [f"user-{i}" for i in range(3000)]
    on_candidate: set[str] = set()
    for pct in (1, 5, 25, 50, 100):
        split = Split({"baseline": 100.0 - pct, "int8": float(pct)}, "baseline")
        now = {k for k in keys if split.choose("digits", k) == "int8"}
        assert on_candidate <= now
        on_candidate = now
    assert on_candidate == set(keys)


def test_breaker_ejects_after_consecutive_failures_and_success_resets_the_count() -> None:
    breaker = Breaker(3)
    assert not breaker.failure() and not breaker.failure()
    breaker.success()
    assert not breaker.failure() and not breaker.failure()
    assert breaker.failure() and breaker.ejected
    assert not breaker.failure()  # ejected once, reported once
    breaker.reset()
    assert not breaker.ejected and breaker.failures == 0
