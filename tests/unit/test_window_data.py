"""The window cache's compact windows give exactly the observations, hence the verdicts, that the stored rows give.

`reference` is `aggregate.observations` as it read rows before the compact form (Python lists and label dicts),
kept here as the specification: any set of windows, in any order, with ids repeated across windows and arms,
ids that are prefixes of one another or end in NUL, non-ASCII and surrogates, must observe the same.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import stats
from controller.aggregate import _add_counts, _newer_report, observations, pair
from controller.observations import ArmObservations, Blocks, Observations
from controller.window_data import WindowData, encode_ids
from modelroll.db import SampleWindowRow
from modelroll.types import Criteria


def reference(windows: list[SampleWindowRow], baseline: str, candidate: str) -> Observations:
    ordered = sorted(windows, key=lambda w: (w.window_start, w.id or 0))

    def arm(variant: str) -> ArmObservations:
        mine = [w for w in ordered if w.variant == variant]
        newest: dict[str, Any] = {}
        for w in mine:
            newest = _newer_report(newest, (w.data or {}).get("cannot_serve", {}))
        return ArmObservations(
            latency_ms=np.asarray([x for w in mine for x in (w.data or {}).get("latency_ms", [])], dtype=np.float64),
            requests=sum(w.requests for w in mine), errors=sum(w.errors for w in mine),
            memory_bytes=np.asarray([x for w in mine for x in (w.data or {}).get("memory_exact_bytes", [])],
                                    dtype=np.float64),
            labelled=sum(w.labelled for w in mine), correct=sum(w.correct for w in mine),
            memory_unmeasured=functools.reduce(_add_counts, ((w.data or {}).get("memory_unmeasured", {})
                                                             for w in mine), {}),
            cannot_serve=str(newest.get("reason", "")),
        )

    def labels(variant: str) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for w in ordered:
            if w.variant == variant:
                out.update((w.data or {}).get("labels", {}))
        return out

    slots = sorted({w.window_start for w in ordered})
    sums = {(v, f): [sum(getattr(w, f) for w in ordered if w.variant == v and w.window_start == t) for t in slots]
            for v in (baseline, candidate) for f in ("labelled", "correct", "requests", "errors")}

    def blocks(n: str, hits: str) -> Blocks:
        return Blocks(*(np.asarray(sums[(v, f)], dtype=np.int64) for v in (baseline, candidate) for f in (n, hits)))

    return Observations(baseline=arm(baseline), candidate=arm(candidate),
                        paired=pair(labels(baseline), labels(candidate)), labels=blocks("labelled", "correct"),
                        requests=blocks("requests", "errors"))


def assert_same(a: Observations, b: Observations) -> None:
    for x, y in ((a.baseline, b.baseline), (a.candidate, b.candidate)):
        np.testing.assert_array_equal(x.latency_ms, y.latency_ms)
        np.testing.assert_array_equal(x.memory_bytes, y.memory_bytes)
        assert x.latency_ms.dtype == y.latency_ms.dtype == np.float64
        assert (x.requests, x.errors, x.labelled, x.correct, x.cannot_serve) == \
               (y.requests, y.errors, y.labelled, y.correct, y.cannot_serve)
        assert dict(x.memory_unmeasured) == dict(y.memory_unmeasured)
    assert a.paired == b.paired
    for x, y in ((a.labels, b.labels), (a.requests, b.requests)):
        assert x is not None and y is not None
        for name in ("baseline_n", "baseline_hits", "candidate_n", "candidate_hits"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))


# Few distinct ids, so that windows and arms share many; the odd ones are the encodings' edge cases.
IDS = st.sampled_from(["r1", "r10", "r1\x00", "r", "é", "\u00e9\u0301", "日本", "\ud800", "a" * 40, "r2", "r3", "x"])
LATENCY = st.floats(min_value=0.0, max_value=1e4, allow_nan=False) | st.sampled_from([float("nan"), float("inf")])


@st.composite
def window_rows(draw: st.DrawFn) -> list[SampleWindowRow]:
    out = []
    count = draw(st.integers(0, 8))
    ids = draw(st.permutations(range(1, count + 1)))  # row ids are unique (a primary key), in any order
    for n in range(count):
        requests = draw(st.integers(0, 20))
        data: dict[str, Any] | None = {
            "latency_ms": draw(st.lists(LATENCY, max_size=6)),
            "memory_exact_bytes": draw(st.lists(st.floats(0, 1e9), max_size=3)),
            "labels": draw(st.dictionaries(IDS, st.booleans(), max_size=6)),
            "memory_unmeasured": draw(st.dictionaries(st.sampled_from(["inline", "http", ""]), st.integers(0, 5))),
        }
        if draw(st.booleans()):
            data["cannot_serve"] = {"reason": draw(st.sampled_from(["a", "b"])), "at": draw(st.floats(0, 50)),
                                    "reports": 1}
        if draw(st.integers(0, 9)) == 0:
            data = None  # a row without data reads as an empty one
        out.append(SampleWindowRow(
            id=ids[n], rollout_id=1,
            variant=draw(st.sampled_from(["fp32", "int8", "other"])), step_index=draw(st.integers(0, 2)),
            window_start=datetime.fromtimestamp(10 * draw(st.integers(0, 3)), UTC),
            window_end=datetime.fromtimestamp(0, UTC), requests=requests, errors=draw(st.integers(0, requests)),
            labelled=draw(st.integers(0, 4)), correct=0, data=data))
    return out


@settings(max_examples=200, deadline=None)
@given(window_rows())
def test_compact_windows_observe_exactly_what_the_rows_observe(rows: list[SampleWindowRow]) -> None:
    expected = reference(rows, "fp32", "int8")
    assert_same(observations(rows, "fp32", "int8"), expected)
    assert_same(observations([WindowData.of(r) for r in reversed(rows)], "fp32", "int8"), expected)
    assert_same(reference(rows[::-1], "fp32", "int8"), expected)  # the order given never matters


def test_decisions_replay_identically_from_rows_and_from_the_compact_windows() -> None:
    rng = np.random.default_rng(3)
    rows = []
    for k in range(40):
        for variant, mean in (("fp32", 10.0), ("int8", 4.0)):
            ids = [f"req-{k}-{i}" for i in range(60)]
            labels = {i: bool(rng.random() < (0.9 if variant == "fp32" else 0.89)) for i in ids}
            rows.append(SampleWindowRow(
                id=len(rows) + 1, rollout_id=1, variant=variant, step_index=0,
                window_start=datetime.fromtimestamp(10 * k, UTC), window_end=datetime.fromtimestamp(0, UTC),
                requests=60, errors=int(rng.integers(0, 2)), labelled=60, correct=sum(labels.values()),
                data={"latency_ms": rng.lognormal(np.log(mean), 0.2, 60).tolist(),
                      "memory_exact_bytes": [mean * 1e6] * 3, "labels": labels}))
    criteria = Criteria(min_samples=100)
    expected = stats.evaluate(criteria, reference(rows, "fp32", "int8"))
    assert stats.evaluate(criteria, observations([WindowData.of(r) for r in rows], "fp32", "int8")) == expected
    assert stats.evaluate(criteria, observations(rows, "fp32", "int8")) == expected
    assert {r.verdict.value for r in expected} >= {"pass"}  # a look that decides something, not only "not yet"


def test_ids_compare_equal_exactly_when_the_ids_are_equal() -> None:
    ids = ["r1", "r1\x00", "r1\x00\x00", "r10", "é", "e\u0301", "\ud800x", ""]
    encoded = encode_ids(ids)
    assert len(set(encoded.tolist())) == len(ids)
    wide = np.concatenate([encoded, encode_ids(["a" * 80])])  # the narrower ones padded with NUL: still distinct
    assert len(np.unique(wide)) == len(ids) + 1


def test_a_compact_window_costs_its_values_not_python_objects() -> None:
    ids = [f"{i:032x}" for i in range(1000)]
    row = SampleWindowRow(id=1, rollout_id=1, variant="fp32", step_index=0, window_start=datetime.now(UTC),
                          window_end=datetime.now(UTC), requests=1000, errors=0, labelled=1000, correct=500,
                          data={"latency_ms": [float(i) for i in range(1000)], "memory_exact_bytes": [1.0] * 5,
                                "labels": {i: n % 2 == 0 for n, i in enumerate(ids)}})
    w = WindowData.of(row)
    assert w.nbytes == 1000 * 8 + 5 * 8 + 1000 * (32 + 1) + 1000
