"""Folding samples into windows and windows into observations: counts, order, pairs and redelivery."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from controller.aggregate import Route, Window, fold, fresh, id_key, observations, pair
from modelroll.db import SampleWindowRow
from modelroll.live.base import Sample

ROUTE = Route(rollout_id=4, model="digits", baseline="fp32", candidate="int8", step_index=1)
ROUTES = {4: ROUTE}
BY_MODEL = {"digits": ROUTE}


def req(variant: str, ts: float, latency_ms: float, status: str = "ok", **kw: object) -> Sample:
    return Sample(kind="request", model="digits", variant=variant, ts=ts, rollout_id=4, step=1,
                  latency_ms=latency_ms, status=status, **kw)  # type: ignore[arg-type]


def rows(windows: dict, first_id: int = 1) -> list[SampleWindowRow]:  # type: ignore[type-arg]
    out = []
    for n, (key, window) in enumerate(windows.items()):
        row = SampleWindowRow(id=first_id + n, rollout_id=key.rollout_id, variant=key.variant,
                              step_index=key.step_index, window_start=key.window_start,
                              window_end=key.window_start, data={})
        window.merge_into(row)
        out.append(row)
    return out


def test_fold_groups_by_rollout_variant_step_and_window() -> None:
    samples = [req("fp32", 100.0, 5.0), req("fp32", 101.0, 6.0), req("int8", 109.9, 2.0),
               req("int8", 110.0, 0.0, status="error"), req("int8", 111.0, 3.0, shadow=True),
               Sample(kind="request", model="digits", variant="fp32", ts=112.0, latency_ms=7.0),  # no rollout id
               req("other", 100.0, 1.0), Sample(kind="request", model="iris", variant="a", ts=1.0)]
    windows, skipped = fold(samples, ROUTES, BY_MODEL)
    assert skipped == 2
    starts = sorted({k.window_start for k in windows})
    assert starts == [datetime.fromtimestamp(100, UTC), datetime.fromtimestamp(110, UTC)]
    by = {(k.variant, k.window_start.timestamp()): w for k, w in windows.items()}
    assert by[("fp32", 100.0)].requests == 2 and by[("fp32", 100.0)].latency_ms == [5.0, 6.0]
    late = by[("int8", 110.0)]
    assert (late.requests, late.errors, late.shadow_requests, late.latency_ms) == (2, 1, 1, [3.0])
    assert by[("fp32", 110.0)].latency_ms == [7.0]  # attributed to the model's active rollout


def test_observations_are_cumulative_in_time_order_with_memory_and_labels() -> None:
    samples = [req("fp32", 120.0, 9.0), req("fp32", 100.0, 8.0), req("int8", 100.0, 3.0),
               Sample(kind="memory", model="digits", variant="int8", ts=101.0, rollout_id=4, memory_bytes=1000,
                      runner="subprocess", memory_exact=True),
               Sample(kind="memory", model="digits", variant="int8", ts=121.0, rollout_id=4, memory_bytes=1200,
                      runner="subprocess", memory_exact=True),
               Sample(kind="feedback", model="digits", variant="fp32", ts=102.0, rollout_id=4, request_id="r1",
                      correct=True),
               Sample(kind="feedback", model="digits", variant="int8", ts=102.0, rollout_id=4, request_id="r1",
                      correct=False, shadow=True),
               Sample(kind="feedback", model="digits", variant="int8", ts=103.0, rollout_id=4, request_id="r2",
                      correct=True)]
    windows, _ = fold(samples, ROUTES, BY_MODEL)
    obs = observations(list(reversed(rows(windows))), "fp32", "int8", looks=3, offline_memory_bytes=(None, 900))
    np.testing.assert_array_equal(obs.baseline.latency_ms, [8.0, 9.0])
    np.testing.assert_array_equal(obs.candidate.memory_bytes, [1000.0, 1200.0])
    assert (obs.candidate.labelled, obs.candidate.correct, obs.baseline.labelled) == (2, 1, 1)
    assert obs.paired.baseline_only == 1 and obs.paired.n == 1
    assert obs.looks == 3 and obs.candidate.offline_memory_bytes == 900 and obs.baseline.offline_memory_bytes is None


def mem(variant: str, ts: float, memory_bytes: int = 0, runner: str = "subprocess", exact: bool = True) -> Sample:
    return Sample(kind="memory", model="digits", variant=variant, ts=ts, rollout_id=4, memory_bytes=memory_bytes,
                  runner=runner, memory_exact=exact)


def test_only_exact_memory_readings_are_figures_the_others_are_counted_per_runner() -> None:
    samples = [mem("fp32", 100.0, 5000), mem("fp32", 101.0, runner="inline", exact=False),
               mem("fp32", 111.0, runner="inline", exact=False), mem("int8", 100.0, runner="http", exact=False),
               mem("int8", 101.0, 777, runner="inline", exact=False),  # a figure without `exact` is no figure
               Sample(kind="memory", model="digits", variant="int8", ts=102.0, rollout_id=4, memory_bytes=900)]
    windows, _ = fold(samples, ROUTES, BY_MODEL)
    stored = rows(windows)
    assert max(r.memory_bytes_max for r in stored if r.variant == "int8") == 0
    obs = observations(stored, "fp32", "int8")
    np.testing.assert_array_equal(obs.baseline.memory_bytes, [5000.0])
    assert obs.candidate.memory_bytes.size == 0
    assert dict(obs.baseline.memory_unmeasured) == {"inline": 2}
    assert dict(obs.candidate.memory_unmeasured) == {"http": 1, "inline": 1, "": 1}  # "": a router older than the flag


def test_window_rows_written_before_exact_readings_stay_readable_and_decide_nothing() -> None:
    # Rows of the version whose `memory_bytes` mixed estimates (inline) with measurements: read, never a figure.
    old = SampleWindowRow(id=1, rollout_id=4, variant="int8", step_index=1, window_start=datetime.fromtimestamp(0, UTC),
                          window_end=datetime.fromtimestamp(10, UTC), requests=3, errors=0, labelled=0, correct=0,
                          memory_bytes_max=600, data={"latency_ms": [1.0, 2.0, 3.0], "memory_bytes": [600.0],
                                                      "labels": {}, "total_sum_ms": 9.0})
    w = Window()
    w.add(mem("int8", 1.0, 400))
    w.merge_into(old)
    obs = observations([old], "fp32", "int8")
    np.testing.assert_array_equal(obs.candidate.memory_bytes, [400.0])
    assert obs.candidate.requests == 3 and obs.candidate.latency_ms.size == 3
    assert old.data["memory_bytes"] == [600.0] and old.data["memory_unmeasured"] == {}


def test_merging_a_window_twice_adds_up() -> None:
    row = SampleWindowRow(rollout_id=4, variant="fp32", step_index=1, window_start=datetime.now(UTC),
                          window_end=datetime.now(UTC), data={})
    for _ in range(2):
        w = Window()
        w.add(req("fp32", 1.0, 4.0))
        w.add(req("fp32", 1.0, 0.0, status="timeout"))
        w.add(mem("fp32", 1.0, runner="inline", exact=False))
        w.merge_into(row)
    assert (row.requests, row.errors, row.data["latency_ms"]) == (4, 2, [4.0, 4.0])
    assert row.data["memory_unmeasured"] == {"inline": 2}


def test_pair_counts_each_outcome() -> None:
    b = {"a": True, "b": True, "c": False, "d": False, "only-b": True}
    c = {"a": True, "b": False, "c": True, "d": False, "only-c": False}
    p = pair(b, c)
    assert (p.both_correct, p.baseline_only, p.candidate_only, p.neither, p.n) == (1, 1, 1, 1, 4)


def test_fresh_skips_samples_already_folded() -> None:
    s = [req("fp32", 1.0, 1.0)] * 3
    kept, cursor = fresh(["5-0", "5-1", "6-0"], s, "5-1")
    assert len(kept) == 1 and cursor == "6-0"
    kept, cursor = fresh(["5-0"], s[:1], "6-0")
    assert kept == [] and cursor == "6-0"
    kept, cursor = fresh(["10-0", "9-3"], s[:2], None)
    assert len(kept) == 2 and cursor == "10-0"
    assert id_key("10-0") > id_key("9-99")


def cannot(variant: str, ts: float, reason: str) -> Sample:
    return Sample(kind="cannot_serve", model="digits", variant=variant, ts=ts, rollout_id=4, step=1, status="error",
                  reason=reason)


def test_cannot_serve_reports_keep_the_newest_reason_across_windows_and_merges() -> None:
    samples = [cannot("int8", 100.0, "old reason"), cannot("int8", 112.0, "artifact hash mismatch: newest"),
               cannot("int8", 101.0, "late but older")]
    windows, skipped = fold(samples, ROUTES, BY_MODEL)
    assert skipped == 0 and all(w.requests == 0 for w in windows.values())  # a report is no request
    stored = rows(windows)
    assert sorted(r.data["cannot_serve"]["reports"] for r in stored) == [1, 2]
    w = Window()
    w.add(cannot("int8", 105.0, "merged into the older window, still older"))
    w.merge_into(next(r for r in stored if r.window_start.timestamp() == 100.0))
    obs = observations(stored, "fp32", "int8")
    assert obs.candidate.cannot_serve == "artifact hash mismatch: newest" and obs.baseline.cannot_serve == ""
    assert observations(rows(fold([req("int8", 100.0, 3.0)], ROUTES, BY_MODEL)[0]), "fp32", "int8") \
        .candidate.cannot_serve == ""


SHADOW_ROUTE = Route(rollout_id=4, model="digits", baseline="fp32", candidate="int8", step_index=0,
                     shadow_steps=frozenset({0}))


def answer(variant: str, ts: float, request_id: str, prediction: list[int], step: int = 0,
           shadow: bool = False, status: str = "ok") -> Sample:
    return Sample(kind="request", model="digits", variant=variant, ts=ts, rollout_id=4, step=step,
                  request_id=request_id, latency_ms=1.0, status=status, shadow=shadow, prediction=prediction)


def label(variant: str, ts: float, request_id: str, correct: bool, shadow: bool = False) -> Sample:
    return Sample(kind="feedback", model="digits", variant=variant, ts=ts, rollout_id=4, step=0,
                  request_id=request_id, correct=correct, shadow=shadow)


def test_predictions_are_kept_only_where_shadow_pairs_can_form() -> None:
    samples = [answer("fp32", 100.0, "a", [3]), answer("int8", 100.0, "a", [3], shadow=True),
               answer("fp32", 101.0, "b", [1, 2]), answer("int8", 101.0, "b", [1, 7], shadow=True),
               answer("fp32", 102.0, "c", [4], status="error"),  # no answer, no prediction
               answer("fp32", 103.0, "d", [5], step=1), answer("int8", 103.0, "e", [5], step=1)]  # split traffic
    windows, _ = fold(samples, {4: SHADOW_ROUTE}, {"digits": SHADOW_ROUTE})
    by = {(k.variant, k.step_index): rows({k: w})[0].data for k, w in windows.items()}
    assert by[("fp32", 0)]["predictions"] == {"a": "3", "b": "1,2"}
    assert by[("int8", 0)]["predictions"] == {"a": "3", "b": "1,7"}
    assert "predictions" not in by[("fp32", 1)] and "predictions" not in by[("int8", 1)]


def test_agreement_counts_pairs_differences_and_who_was_right_per_slot_of_the_request() -> None:
    samples = [answer("fp32", 100.0, r, [p]) for r, p in (("a", 1), ("b", 2), ("c", 3), ("d", 4))]
    samples += [answer("int8", 100.5, r, [p], shadow=True) for r, p in (("a", 1), ("b", 9), ("c", 8))]
    samples += [answer("fp32", 110.0, "e", [5]), answer("int8", 110.0, "e", [6], shadow=True)]
    # Labels come back later (another window): b only the baseline right, c neither right, e not labelled yet.
    samples += [label("fp32", 130.0, "b", True), label("int8", 130.0, "b", False, shadow=True),
                label("fp32", 130.0, "c", False), label("int8", 130.0, "c", False, shadow=True),
                label("fp32", 130.0, "a", True), label("int8", 130.0, "a", True, shadow=True)]
    windows, _ = fold(samples, {4: SHADOW_ROUTE}, {"digits": SHADOW_ROUTE})
    a = observations(rows(windows), "fp32", "int8").agreement
    assert a.pairs.tolist() == [3, 1, 0]  # slots at 100, 110 and 130 (labels only)
    assert a.disagree.tolist() == [2, 1, 0]
    assert (a.baseline_only.tolist(), a.candidate_only.tolist(), a.neither.tolist()) == ([1, 0, 0], [0, 0, 0],
                                                                                         [1, 0, 0])


def test_windows_written_before_predictions_were_kept_read_as_no_agreement() -> None:
    old = SampleWindowRow(id=1, rollout_id=4, variant="fp32", step_index=0,
                          window_start=datetime.fromtimestamp(100, UTC), window_end=datetime.fromtimestamp(110, UTC),
                          requests=3, errors=0, labelled=2, correct=2,
                          data={"latency_ms": [1.0, 2.0, 3.0], "labels": {"a": True, "b": True}})
    obs = observations([old], "fp32", "int8")
    assert obs.agreement.n == 0 and obs.paired.n == 0
    assert obs.labels is not None and obs.labels.baseline_n.tolist() == [2]


def test_blocks_hold_both_arms_per_time_slot_across_steps() -> None:
    samples = [req("fp32", 100.0, 5.0), req("fp32", 101.0, 0.0, status="error"), req("int8", 102.0, 2.0),
               req("fp32", 112.0, 5.0), Sample(kind="request", model="digits", variant="int8", ts=113.0, rollout_id=4,
                                               step=2, latency_ms=2.0)]
    windows, _ = fold(samples, ROUTES, BY_MODEL)
    obs = observations(rows(windows), "fp32", "int8")
    assert obs.requests is not None
    assert (obs.requests.baseline_n.tolist(), obs.requests.baseline_hits.tolist()) == ([2, 1], [1, 0])
    assert (obs.requests.candidate_n.tolist(), obs.requests.candidate_hits.tolist()) == ([1, 1], [0, 0])
