"""Unit and property tests of the statistics: confidence-sequence primitives and per-criterion verdicts."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import criterion
from controller.confseq import quantile_intervals, quantile_ranks, stitched_boundary
from controller.difference import Side, paired, stratified
from controller.observations import ArmObservations, Blocks, Observations, PairedCounts
from controller.stats import ALPHA_SHARES, CRITERIA, MEMORY_MIN_READINGS, alphas, evaluate, overall
from modelroll.errors import InvalidInput
from modelroll.types import Criteria, CriterionResult, Verdict


def arm(latency_ms: np.ndarray | None = None, *, requests: int | None = None, errors: int = 0,
        memory: np.ndarray | None = None, labelled: int = 0, correct: int = 0,
        offline: int | None = None, unmeasured: dict[str, int] | None = None) -> ArmObservations:
    latency = np.asarray(latency_ms if latency_ms is not None else [], dtype=np.float64)
    return ArmObservations(
        latency_ms=latency, requests=requests if requests is not None else latency.size, errors=errors,
        memory_bytes=np.asarray(memory if memory is not None else [], dtype=np.float64),
        labelled=labelled, correct=correct, offline_memory_bytes=offline, memory_unmeasured=unmeasured or {},
    )


def healthy_pair(n: int = 3000, seed: int = 1, latency_ratio: float = 0.35, memory_ratio: float = 0.3,
                 paired: PairedCounts | None = None, cand_errors: int = 3) -> Observations:
    rng = np.random.default_rng(seed)
    mem = 1e9 * (1 + 0.01 * rng.standard_normal(60))
    base = arm(rng.lognormal(np.log(20), 0.35, n), errors=3, memory=mem, labelled=n, correct=int(0.9 * n),
               offline=10**9)
    cand = arm(rng.lognormal(np.log(20 * latency_ratio), 0.35, n), errors=cand_errors,
               memory=memory_ratio * 1e9 * (1 + 0.01 * rng.standard_normal(60)), labelled=n,
               correct=int(0.9 * n), offline=int(memory_ratio * 10**9))
    if paired is None:
        d = int(0.015 * n)
        paired = PairedCounts(both_correct=int(0.9 * n) - d, baseline_only=d, candidate_only=d,
                              neither=n - int(0.9 * n) - d)
    return Observations(baseline=base, candidate=cand, paired=paired)


def by_name(results: list[CriterionResult]) -> dict[str, CriterionResult]:
    return {r.criterion: r for r in results}


# ---- primitives ---------------------------------------------------------------------------------------------

def test_stitched_boundary_grows_slower_than_time_and_widens_for_smaller_alpha() -> None:
    values = [stitched_boundary(v, 0.01, 10.0, 0.1) for v in (10.0, 100.0, 1e4, 1e6)]
    assert values == sorted(values)
    assert [f / v for f, v in zip(values, (10.0, 100.0, 1e4, 1e6), strict=True)] == sorted(
        [f / v for f, v in zip(values, (10.0, 100.0, 1e4, 1e6), strict=True)], reverse=True)
    assert stitched_boundary(100.0, 0.001, 10.0, 0.1) > stitched_boundary(100.0, 0.01, 10.0, 0.1)
    # Below v_min the boundary is the one at v_min (Howard et al. 2021 use max(v, m)).
    assert stitched_boundary(1.0, 0.01, 10.0, 0.1) == stitched_boundary(10.0, 0.01, 10.0, 0.1)


@given(n=st.integers(1, 10**7), p=st.sampled_from([0.5, 0.9, 0.95, 0.99]), alpha=st.floats(1e-6, 0.2))
def test_quantile_ranks_bracket_the_empirical_quantile(n: int, p: float, alpha: float) -> None:
    ranks = quantile_ranks(n, p, alpha, 200)
    assert 0 <= ranks.low <= ranks.estimate <= ranks.high <= n + 1
    wider = quantile_ranks(n, p, alpha / 10, 200)
    assert wider.low <= ranks.low and wider.high >= ranks.high


def test_quantile_interval_width_shrinks_like_root_n() -> None:
    widths = []
    for n in (1_000, 100_000):
        ranks = quantile_ranks(n, 0.95, 0.0025, 200)
        widths.append((ranks.high - ranks.low) / n)
    assert widths[1] < widths[0] / 5  # ~ sqrt(100) = 10x narrower up to the iterated-log factor


def test_quantile_intervals_are_unbounded_until_the_data_bound_them() -> None:
    (iv,) = quantile_intervals(np.arange(10.0), (0.95,), 0.0025, 200)
    assert iv.high == math.inf and iv.low == -math.inf
    (empty,) = quantile_intervals(np.array([]), (0.5,), 0.0025, 200)
    assert empty.low == -math.inf and empty.high == math.inf


SIDES = (Side(0.005, 1000, True), Side(0.015, 5000, False))


@given(counts=st.tuples(st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 300)),
       null_low=st.booleans(), null_high=st.booleans())
@settings(max_examples=80, deadline=None)
def test_paired_bounds_contain_the_estimate_and_mirror_when_the_arms_swap(
        counts: tuple[int, int, int, int], null_low: bool, null_high: bool) -> None:
    minus, zero, plus, unknown = counts
    low, high = Side(0.005, 1000, null_low), Side(0.005, 1000, null_high)
    b = paired(minus, zero, plus, unknown, low, high)
    if minus + zero + plus + unknown == 0:
        assert (b.low, b.high) == (-math.inf, math.inf)
        return
    assert -1.0 <= b.low <= b.high <= 1.0
    if not math.isnan(b.estimate):
        assert b.low - 1e-12 <= b.estimate <= b.high + 1e-12
    if null_low == null_high:  # the candidate's wins are the baseline's losses: the interval mirrors
        m = paired(plus, zero, minus, unknown, low, high)
        assert m.low == pytest.approx(-b.high, abs=1e-9) and m.high == pytest.approx(-b.low, abs=1e-9)


def test_paired_bounds_tighten_with_data_and_with_fewer_differences() -> None:
    small, big = paired(10, 180, 10, 0, *SIDES), paired(1000, 18000, 1000, 0, *SIDES)
    assert big.high - big.low < (small.high - small.low) / 5
    rare, often = paired(50, 9900, 50, 0, *SIDES), paired(2500, 5000, 2500, 0, *SIDES)
    assert rare.high - rare.low < (often.high - often.low) / 4


def test_pairs_that_never_differ_yet_still_get_an_honest_interval() -> None:
    # Nothing varies at the estimate (every pair alike so far): the bound is where the variance of a mean of -theta
    # would reject it, not the estimate itself.
    b = paired(0, 200, 0, 0, *SIDES)
    assert b.low < -0.05 and b.high > 0.01
    assert paired(0, 2000, 0, 0, *SIDES).low < -0.005


def test_unlabelled_disagreements_only_widen_the_paired_bounds() -> None:
    known = paired(30, 9940, 30, 0, *SIDES)
    unknown = paired(20, 9940, 20, 20, *SIDES)
    assert unknown.low < known.low and unknown.high > known.high
    label_free = paired(0, 9940, 0, 60, *SIDES)  # nothing labelled: |difference| <= the share that differs
    assert -0.012 < label_free.low < -0.006 and 0.006 < label_free.high < 0.012


@given(rates=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)), n=st.integers(1, 5000), k=st.sampled_from([1.0, 2.0]),
       seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_stratified_bounds_contain_the_estimate_and_stay_in_range(rates: tuple[float, float], n: int, k: float,
                                                                 seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 50, size=(2, 1 + n // 50))
    hits = rng.binomial(sizes, np.array(rates)[:, None])
    b = stratified(Blocks(sizes[0], hits[0], sizes[1], hits[1]), k, *SIDES)
    if not ((sizes[0] > 0) & (sizes[1] > 0)).any():
        assert (b.low, b.high) == (-math.inf, math.inf)
        return
    assert -k <= b.low <= b.estimate <= b.high <= 1.0


def test_stratified_blocks_cancel_a_drift_both_arms_share() -> None:
    # Accuracy 0.95 at night, 0.80 at the peak, when the candidate gets 10x more of the traffic: pooled rates would
    # read a 10-point drop; within each block the arms are equal and the difference is about zero.
    sizes = np.array([[900, 100], [100, 900]])  # per block: baseline, candidate
    correct = np.array([[855, 95], [80, 720]])
    blocks = Blocks(sizes[:, 0], correct[:, 0], sizes[:, 1], correct[:, 1])
    b = stratified(blocks, 1.0, *SIDES)
    assert abs(b.estimate) < 0.01 and b.low < 0 < b.high
    pooled = correct[:, 1].sum() / sizes[:, 1].sum() - correct[:, 0].sum() / sizes[:, 0].sum()
    assert pooled < -0.1


# ---- evaluate: contract -------------------------------------------------------------------------------------

def test_evaluate_returns_the_contract_criteria_in_order() -> None:
    results = evaluate(Criteria(), healthy_pair())
    assert [r.criterion for r in results] == list(CRITERIA) == [
        "latency_p50", "latency_p95", "memory", "accuracy", "errors"]


def test_clearly_good_candidate_passes_every_criterion_with_readable_messages() -> None:
    results = by_name(evaluate(Criteria(), healthy_pair()))
    assert overall(list(results.values())) is Verdict.PASS
    assert re.fullmatch(r"candidate p95 is 0\.\d\d× baseline \[0\.\d\d, 0\.\d\d\], needs ≤ 0\.50×: passes",
                        results["latency_p95"].message)
    assert re.fullmatch(r"candidate memory is 0\.30× baseline \[0\.\d\d, 0\.\d\d\] \(offline 0\.30×\), "
                        r"needs ≤ 0\.40×: passes", results["memory"].message)
    assert re.fullmatch(r"accuracy [+−]0\.0 points \[−\d\.\d, \+\d\.\d\] vs budget −2\.0 \(3000 shadow pairs\): passes",
                        results["accuracy"].message)
    assert re.fullmatch(r"candidate error rate 0\.10% vs baseline 0\.10%: difference \+0\.0 points "
                        r"\[−0\.\d, \+0\.\d\], allowed ≤ max\(\+1\.0 points, 2× baseline\); "
                        r"candidate − 2× baseline \[−\d\.\d, \+\d\.\d\] vs ≤ 0: passes", results["errors"].message)


def test_not_enough_samples_gives_no_verdict_whatever_the_data() -> None:
    obs = healthy_pair(n=120, latency_ratio=5.0)  # terrible, but too few samples to say so
    for result in evaluate(Criteria(min_samples=200), obs):
        assert result.verdict is Verdict.UNDECIDED
        assert result.message.startswith("not enough"), result.message
    assert by_name(evaluate(Criteria(), obs))["latency_p95"].message == "not enough samples yet: 120 of 200 per arm"


def test_accuracy_without_labels_stays_undecided() -> None:
    obs = healthy_pair(paired=PairedCounts())
    no_labels = Observations(
        baseline=arm(obs.baseline.latency_ms, memory=obs.baseline.memory_bytes),
        candidate=arm(obs.candidate.latency_ms, memory=obs.candidate.memory_bytes), paired=PairedCounts())
    result = by_name(evaluate(Criteria(), no_labels))["accuracy"]
    assert result.verdict is Verdict.UNDECIDED
    assert result.message == "not enough labelled predictions yet: 0 of 200 per arm"


def test_accuracy_is_not_gated_when_any_drop_is_allowed() -> None:
    result = by_name(evaluate(Criteria(accuracy_drop_max=1.0), healthy_pair(paired=PairedCounts())))["accuracy"]
    assert result.verdict is Verdict.PASS and "not gated" in result.message


def test_three_point_drop_fails_and_paired_test_is_tighter_than_unpaired() -> None:
    n = 20_000
    paired = PairedCounts(both_correct=int(0.86 * n), baseline_only=int(0.04 * n), candidate_only=int(0.01 * n),
                          neither=int(0.09 * n))
    obs = healthy_pair(n=n, paired=paired)
    obs = Observations(
        baseline=arm(obs.baseline.latency_ms, memory=obs.baseline.memory_bytes, labelled=n, correct=int(0.90 * n)),
        candidate=arm(obs.candidate.latency_ms, memory=obs.candidate.memory_bytes, labelled=n, correct=int(0.87 * n)),
        paired=paired)
    with_pairs = by_name(evaluate(Criteria(), obs))["accuracy"]
    assert with_pairs.verdict is Verdict.FAIL and "shadow pairs" in with_pairs.method
    assert with_pairs.estimate == pytest.approx(-0.03)
    assert with_pairs.message.endswith("vs budget −2.0 (20000 shadow pairs): fails")
    unpaired = by_name(evaluate(Criteria(), Observations(obs.baseline, obs.candidate, PairedCounts())))["accuracy"]
    assert "unpaired" in unpaired.method and unpaired.estimate == pytest.approx(-0.03)
    assert unpaired.ci_high is not None and unpaired.ci_low is not None
    assert with_pairs.ci_high is not None and with_pairs.ci_low is not None
    # 5 % of pairs differ in correctness (variance ~0.05) against ~0.18 for two independent arms: ~1.9x narrower
    assert with_pairs.ci_high - with_pairs.ci_low < (unpaired.ci_high - unpaired.ci_low) / 1.5


def test_served_labels_still_decide_when_shadow_pairs_stop_short() -> None:
    obs = healthy_pair(n=20_000)
    stalled = PairedCounts(both_correct=130, baseline_only=3, candidate_only=2, neither=15)  # shadow step ended early
    dropped = Observations(
        arm(obs.baseline.latency_ms, memory=obs.baseline.memory_bytes, labelled=20_000, correct=18_000),
        arm(obs.candidate.latency_ms, memory=obs.candidate.memory_bytes, labelled=20_000, correct=17_000),
        stalled)
    result = by_name(evaluate(Criteria(), dropped))["accuracy"]
    assert result.verdict is Verdict.FAIL
    assert result.message.endswith("(20000 and 20000 labelled, unpaired): fails")


def test_shadow_and_served_traffic_that_disagree_decide_nothing() -> None:
    obs = healthy_pair(n=20_000)  # pairs say "no change" on 20,000 requests
    served = Observations(
        arm(obs.baseline.latency_ms, memory=obs.baseline.memory_bytes, labelled=20_000, correct=18_000),
        arm(obs.candidate.latency_ms, memory=obs.candidate.memory_bytes, labelled=20_000, correct=15_000),
        obs.paired)
    result = by_name(evaluate(Criteria(), served))["accuracy"]
    assert result.verdict is Verdict.UNDECIDED
    assert "shadow pairs and served traffic disagree" in result.message


def _carried_looks(observations: list[Observations]) -> list[dict[str, CriterionResult]]:
    """Each look evaluated with the running intervals the looks before it left, as the reconciler does."""
    carried: dict[str, tuple[float, float]] = {}
    looks = []
    for obs in observations:
        results = evaluate(Criteria(), Observations(obs.baseline, obs.candidate, obs.paired, carried=carried))
        carried = criterion.carry(results)
        looks.append(by_name(results))
    return looks


def test_a_look_that_excludes_the_looks_before_holds_only_while_they_disagree_on_the_verdict() -> None:
    """The arms change under a rollout (the candidate's memory after warm-up, latency under a step's new load): the
    look's interval may then exclude the running one. Both passing still passes, and the rollout is never stuck."""
    obs = healthy_pair(memory_ratio=0.30)
    warmed = _with_memory(obs, obs.baseline.memory_bytes, obs.candidate.memory_bytes * 1.15)  # 0.30x -> 0.345x
    looks = _carried_looks([obs, warmed, warmed])
    assert [look["memory"].verdict for look in looks] == [Verdict.PASS] * 3
    assert "lies outside the looks before" in looks[1]["memory"].message
    assert looks[1]["memory"].ci_low < 0.31 and looks[1]["memory"].ci_high > 0.34  # the hull: a verdict needs both
    assert "lies outside" not in looks[2]["memory"].message  # and the next look narrows it again

    failing = _with_memory(obs, obs.baseline.memory_bytes, obs.candidate.memory_bytes * 2.0)  # 0.60x: fails now
    looks = _carried_looks([obs, failing, failing])
    assert [look["memory"].verdict for look in looks] == [Verdict.PASS, Verdict.UNDECIDED, Verdict.FAIL]


def test_an_empty_interval_is_never_carried() -> None:
    assert criterion.combine((0.1, 0.2), (0.3, 0.4)) == (0.1, 0.4)
    assert criterion.combine((0.1, 0.3), (0.2, 0.4)) == (0.2, 0.3)
    assert criterion.combine((0.1, 0.3), (0.5, 0.4)) == (0.1, 0.3)  # a look whose own sequences excluded each other
    recorded = [{"sequences": {"memory": {"look": (0.5, 0.6), "carried": (0.4, 0.3)}}}]  # written before this rule
    assert criterion.carry(recorded) == {"memory": (0.5, 0.6)}


def test_error_burst_fails_the_guardrail_at_the_first_verdict() -> None:
    result = by_name(evaluate(Criteria(), healthy_pair(n=200, cand_errors=40)))["errors"]
    assert result.verdict is Verdict.FAIL
    assert result.candidate_value == pytest.approx(0.2)
    assert overall(evaluate(Criteria(), healthy_pair(n=200, cand_errors=40))) is Verdict.FAIL


def test_latency_slower_candidate_fails_and_boundary_one_stays_undecided() -> None:
    slow = by_name(evaluate(Criteria(), healthy_pair(n=20_000, latency_ratio=0.8)))
    assert slow["latency_p50"].verdict is Verdict.FAIL and slow["latency_p95"].verdict is Verdict.FAIL
    assert slow["latency_p50"].message.endswith("needs ≤ 0.50×: fails")
    boundary = by_name(evaluate(Criteria(), healthy_pair(n=20_000, latency_ratio=0.5)))
    assert boundary["latency_p50"].verdict is Verdict.UNDECIDED
    assert boundary["latency_p50"].message.endswith("not decided yet")


def test_quantiles_shrug_off_outliers_and_invalid_values_are_counted() -> None:
    obs = healthy_pair()
    rng = np.random.default_rng(5)
    noisy = np.concatenate([obs.candidate.latency_ms, rng.uniform(1e4, 1e5, 20), [np.nan, -1.0, np.inf]])
    rng.shuffle(noisy)
    polluted = Observations(obs.baseline, arm(noisy, requests=noisy.size, memory=obs.candidate.memory_bytes,
                                              labelled=3000, correct=2700), obs.paired)
    clean, dirty = by_name(evaluate(Criteria(), obs)), by_name(evaluate(Criteria(), polluted))
    assert dirty["latency_p50"].verdict is Verdict.PASS
    assert dirty["latency_p50"].estimate == pytest.approx(clean["latency_p50"].estimate, rel=0.02)
    assert "(3 invalid latency values ignored)" in dirty["latency_p50"].message


def test_memory_needs_gauge_readings_and_shows_the_offline_figure() -> None:
    obs = healthy_pair()
    few = Observations(
        arm(obs.baseline.latency_ms, memory=obs.baseline.memory_bytes[:4], labelled=3000, correct=2700),
        arm(obs.candidate.latency_ms, memory=obs.candidate.memory_bytes[:4], labelled=3000, correct=2700),
        obs.paired)
    result = by_name(evaluate(Criteria(), few))["memory"]
    assert result.verdict is Verdict.UNDECIDED
    assert result.message == f"not enough memory readings yet: 4 of {MEMORY_MIN_READINGS} per arm"
    big = by_name(evaluate(Criteria(), healthy_pair(memory_ratio=0.6)))["memory"]
    assert big.verdict is Verdict.FAIL and "(offline 0.60×)" in big.message
    candidate_only = Observations(arm(obs.baseline.latency_ms, memory=obs.baseline.memory_bytes), obs.candidate,
                                  obs.paired)
    assert "(offline candidate 300 MB)" in by_name(evaluate(Criteria(), candidate_only))["memory"].message


def _with_memory(obs: Observations, base: np.ndarray | None, cand: np.ndarray | None,
                 unmeasured: tuple[dict[str, int], dict[str, int]] = ({}, {}),
                 offline: tuple[int | None, int | None] | None = None) -> Observations:
    """`obs` with other memory readings (exact ones, and counts of runners that could not measure)."""
    b, c = obs.baseline, obs.candidate
    off = offline if offline is not None else (b.offline_memory_bytes, c.offline_memory_bytes)
    return Observations(
        arm(b.latency_ms, errors=b.errors, memory=base, labelled=b.labelled, correct=b.correct, offline=off[0],
            unmeasured=unmeasured[0]),
        arm(c.latency_ms, errors=c.errors, memory=cand, labelled=c.labelled, correct=c.correct, offline=off[1],
            unmeasured=unmeasured[1]),
        obs.paired)


@pytest.mark.parametrize("runner", ["inline", "http"])
def test_memory_of_a_runner_that_cannot_measure_holds_not_measurable_here(runner: str) -> None:
    # A clearly good candidate on every other criterion, with the offline figure (0.30×) beside: live gating
    # never decides on it, nor on anything the runner could only estimate.
    obs = _with_memory(healthy_pair(), None, None, ({runner: 40}, {runner: 40}))
    results = by_name(evaluate(Criteria(), obs))
    memory = results["memory"]
    assert memory.verdict is Verdict.UNDECIDED and memory.source == "unmeasurable"
    assert memory.message.startswith(f"not measurable here ({runner} runner): ")
    assert "MODELROLL_ROUTER_RUNNER=subprocess" in memory.message and "--memory-gate offline" in memory.message
    assert memory.estimate is memory.ci_low is memory.ci_high is memory.baseline_value is None
    assert overall(list(results.values())) is Verdict.UNDECIDED  # it holds the rollout
    assert all(r.verdict is Verdict.PASS for name, r in results.items() if name != "memory")


def test_not_measurable_is_said_at_once_and_names_each_runner_that_cannot() -> None:
    obs = healthy_pair(n=20)  # far fewer requests than min_samples: the reason still shows, waiting cannot help
    mixed = _with_memory(obs, obs.baseline.memory_bytes, None, ({}, {"http": 3, "inline": 2}))
    memory = by_name(evaluate(Criteria(), mixed))["memory"]
    assert memory.verdict is Verdict.UNDECIDED
    assert memory.message.startswith("not measurable here (http runner, inline runner): ")
    assert (memory.baseline_n, memory.candidate_n) == (60, 0)


def test_exact_readings_decide_beside_runners_that_cannot_measure_and_say_what_was_ignored() -> None:
    obs = healthy_pair()
    mixed = _with_memory(obs, obs.baseline.memory_bytes, obs.candidate.memory_bytes, ({"inline": 7}, {}))
    memory = by_name(evaluate(Criteria(), mixed))["memory"]
    assert memory.verdict is Verdict.PASS and memory.source == "live"
    assert "(7 readings from the inline runner ignored: not measurable there), needs ≤ 0.40×: passes" in memory.message


@pytest.mark.parametrize(("ratio", "verdict", "word"), [(0.3, Verdict.PASS, "passes"), (0.6, Verdict.FAIL, "fails")])
def test_memory_gated_offline_decides_on_the_optimizers_ratio_and_says_offline(ratio: float, verdict: Verdict,
                                                                              word: str) -> None:
    # No exact reading at all (inline routers), and fewer requests than min_samples: the offline figure decides.
    obs = _with_memory(healthy_pair(n=20, memory_ratio=ratio), None, None, ({"inline": 9}, {"inline": 9}))
    memory = by_name(evaluate(Criteria(memory_source="offline"), obs))["memory"]  # type: ignore[arg-type]
    assert memory.verdict is verdict and memory.source == "offline"
    assert memory.estimate == pytest.approx(ratio)
    assert (memory.baseline_value, memory.candidate_value) == (1e9, int(ratio * 10**9))
    assert re.fullmatch(rf"candidate memory is {ratio:.2f}× baseline offline \(\d+\.\d MiB vs 953\.7 MiB, the "
                        rf"optimizer's figures\), needs ≤ 0\.40×: {word}", memory.message), memory.message
    assert memory.method.startswith("offline: ")


@pytest.mark.parametrize("offline", [(None, None), (10**9, None), (None, 3 * 10**8), (0, 3 * 10**8)])
def test_memory_gated_offline_without_both_figures_is_not_measurable(offline: tuple[int | None, int | None]) -> None:
    obs = _with_memory(healthy_pair(), healthy_pair().baseline.memory_bytes, healthy_pair().candidate.memory_bytes,
                       offline=offline)
    memory = by_name(evaluate(Criteria(memory_source="offline"), obs))["memory"]  # type: ignore[arg-type]
    assert memory.verdict is Verdict.UNDECIDED and memory.source == "unmeasurable"  # exact live readings don't decide
    assert memory.message.startswith("not measurable here (offline): memory is gated on the optimizer's offline figure")
    assert "modelroll optimize" in memory.message


@given(obs=st.builds(lambda *a: _random_obs(*a), st.integers(0, 3000), st.integers(0, 3000), st.floats(0.05, 3.0),
                     st.integers(0, 2**32 - 1), st.floats(0, 0.3), st.floats(0, 0.3), st.floats(0.5, 1.0),
                     st.booleans()),
       keep=st.integers(0, MEMORY_MIN_READINGS - 1), runner=st.sampled_from(["inline", "http", ""]),
       min_samples=st.sampled_from([1, 50, 200]))
@settings(max_examples=60, deadline=None)
def test_no_live_memory_verdict_without_enough_exact_readings_when_a_runner_cannot_measure(
        obs: Observations, keep: int, runner: str, min_samples: int) -> None:
    # Whatever else was seen, fewer exact readings than a verdict needs beside a runner's "cannot" never decide.
    thin = _with_memory(obs, obs.baseline.memory_bytes, obs.candidate.memory_bytes[:keep], ({}, {runner: 1}))
    memory = by_name(evaluate(Criteria(min_samples=min_samples), thin))["memory"]
    assert memory.verdict is Verdict.UNDECIDED and memory.source == "unmeasurable", memory


def test_alpha_shares_spend_the_whole_budget_with_every_pass_side_at_most_a_tenth() -> None:
    assert set(ALPHA_SHARES) == set(CRITERIA)
    assert sum(s.pass_side + s.fail_side for s in ALPHA_SHARES.values()) == pytest.approx(1.0)
    assert max(s.pass_side for s in ALPHA_SHARES.values()) == pytest.approx(0.1)
    for result in evaluate(Criteria(alpha=0.05), healthy_pair()):
        alpha_pass, alpha_fail = alphas(Criteria(alpha=0.05), result.criterion)
        assert f"alpha {alpha_pass:.4g} pass / {alpha_fail:.4g} fail" in result.method


@pytest.mark.parametrize("bad, message", [
    (dict(errors=5, requests=3), "errors (5) cannot exceed its requests (3)"),
    (dict(correct=9, labelled=3), "correct (9) cannot exceed its labelled (3)"),
    (dict(requests=-1), "requests must be >= 0, got -1"),
])
def test_inconsistent_counts_are_rejected_with_a_clear_message(bad: dict[str, int], message: str) -> None:
    fields = dict(requests=10, errors=0, labelled=0, correct=0) | bad
    broken = ArmObservations(latency_ms=np.zeros(0), memory_bytes=np.zeros(0), **fields)
    with pytest.raises(InvalidInput, match=re.escape(message)):
        evaluate(Criteria(), Observations(broken, arm(), PairedCounts()))
    with pytest.raises(InvalidInput, match="paired counts must be >= 0"):
        evaluate(Criteria(), Observations(arm(), arm(), PairedCounts(neither=-1)))


def test_evaluate_is_fast_on_a_million_latencies_per_arm() -> None:
    rng = np.random.default_rng(2)
    n = 1_000_000
    obs = Observations(
        arm(rng.lognormal(3, 0.4, n), memory=np.full(100, 1e9), labelled=n, correct=n // 2),
        arm(rng.lognormal(2, 0.4, n), memory=np.full(100, 3e8), labelled=n, correct=n // 2),
        PairedCounts(both_correct=n // 2, neither=n // 2))
    timings = []
    for _ in range(3):  # best of three: the machine is shared
        started = time.perf_counter()
        results = evaluate(Criteria(), obs)
        timings.append(time.perf_counter() - started)
    assert overall(results) is Verdict.PASS
    assert min(timings) < 0.5, f"evaluate took {min(timings):.3f} s on 10^6 latencies per arm"


# ---- evaluate: properties -----------------------------------------------------------------------------------

observations = st.builds(
    lambda n_b, n_c, scale, seed, err_b, err_c, acc, pairs: _random_obs(n_b, n_c, scale, seed, err_b, err_c, acc,
                                                                        pairs),
    st.integers(0, 3000), st.integers(0, 3000), st.floats(0.05, 3.0), st.integers(0, 2**32 - 1),
    st.floats(0, 0.3), st.floats(0, 0.3), st.floats(0.5, 1.0), st.booleans())


def _random_obs(n_b: int, n_c: int, scale: float, seed: int, err_b: float, err_c: float, acc: float,
                pairs: bool) -> Observations:
    rng = np.random.default_rng(seed)

    def one(n: int, s: float, err: float) -> ArmObservations:
        errors = int(rng.binomial(n, err)) if n else 0
        correct = int(rng.binomial(n, acc)) if n else 0
        return arm(rng.lognormal(np.log(20 * s), 0.5, n), requests=n, errors=errors,
                   memory=s * 1e8 * (1 + 0.02 * rng.standard_normal(n // 50)), labelled=n, correct=correct)

    paired = PairedCounts()
    if pairs:
        k = min(n_b, n_c)
        paired = PairedCounts(*(int(v) for v in rng.multinomial(k, [acc * 0.95, acc * 0.05, 0.03, 1 - acc - 0.03]
                                                                if acc < 0.97 else [0.9, 0.04, 0.03, 0.03])))
    return Observations(one(n_b, 1.0, err_b), one(n_c, scale, err_c), paired)


@given(obs=observations, alpha=st.sampled_from([0.01, 0.05, 0.2]), min_samples=st.sampled_from([1, 50, 200]))
@settings(max_examples=80, deadline=None)
def test_every_verdict_agrees_with_its_interval_and_threshold(obs: Observations, alpha: float,
                                                             min_samples: int) -> None:
    results = evaluate(Criteria(alpha=alpha, min_samples=min_samples), obs)
    assert [r.criterion for r in results] == list(CRITERIA)
    for r in results:
        for value in (r.estimate, r.ci_low, r.ci_high):
            assert value is None or math.isfinite(value), r  # JSON-safe: unbounded ends are None
        if r.ci_low is not None and r.ci_high is not None:
            assert r.ci_low <= r.ci_high
            if r.estimate is not None:
                assert r.ci_low - 1e-9 <= r.estimate <= r.ci_high + 1e-9, r
        lower_is_better = r.criterion != "accuracy"
        relative = r.sequences.get("errors_relative", {}).get("look")  # errors may pass on its relative limit
        if r.verdict is Verdict.PASS and r.method != "not gated":
            assert r.ci_high is not None if lower_is_better else r.ci_low is not None
            assert ((r.ci_high <= r.threshold) if lower_is_better else (r.ci_low >= r.threshold)) or (  # type: ignore[operator]
                relative is not None and relative[1] is not None and relative[1] <= 0), r
        if r.verdict is Verdict.FAIL:
            assert (r.ci_low > r.threshold) if lower_is_better else (r.ci_high < r.threshold)  # type: ignore[operator]
            assert relative is None or (relative[0] is not None and relative[0] > 0), r
        assert r.message.endswith(("passes", "fails", "not decided yet")) or r.message.startswith("not enough")


@given(seed=st.integers(0, 2**32 - 1), factor=st.floats(0.1, 10.0))
@settings(max_examples=30, deadline=None)
def test_latency_interval_is_scale_equivariant_and_order_free(seed: int, factor: float) -> None:
    obs = healthy_pair(n=1000, seed=seed)
    base = by_name(evaluate(Criteria(), obs))
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(obs.candidate.latency_ms)
    scaled = Observations(obs.baseline, arm(shuffled * factor, memory=obs.candidate.memory_bytes, labelled=1000,
                                            correct=900), obs.paired)
    moved = by_name(evaluate(Criteria(), scaled))
    for name in ("latency_p50", "latency_p95"):
        for attr in ("estimate", "ci_low", "ci_high"):
            assert getattr(moved[name], attr) == pytest.approx(getattr(base[name], attr) * factor, rel=1e-9)


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=20, deadline=None)
def test_swapping_arms_inverts_the_latency_ratio_interval(seed: int) -> None:
    obs = healthy_pair(n=800, seed=seed, latency_ratio=0.7)
    forward = by_name(evaluate(Criteria(), obs))
    backward = by_name(evaluate(Criteria(), Observations(obs.candidate, obs.baseline, obs.paired)))
    for name in ("latency_p50", "latency_p95"):
        f, b = forward[name], backward[name]
        assert f.ci_low is not None and f.ci_high is not None and b.ci_low is not None and b.ci_high is not None
        assert b.ci_low == pytest.approx(1 / f.ci_high) and b.ci_high == pytest.approx(1 / f.ci_low)


@given(verdicts=st.lists(st.sampled_from(list(Verdict)), max_size=6))
def test_overall_fails_on_any_fail_and_passes_only_when_all_pass(verdicts: list[Verdict]) -> None:
    results = [CriterionResult(criterion="x", verdict=v, estimate=None, ci_low=None, ci_high=None, threshold=0.0,
                               baseline_value=None, candidate_value=None, baseline_n=0, candidate_n=0,
                               method="m", message="m") for v in verdicts]
    expected = (Verdict.FAIL if Verdict.FAIL in verdicts
                else Verdict.PASS if verdicts and set(verdicts) == {Verdict.PASS} else Verdict.UNDECIDED)
    assert overall(results) is expected
