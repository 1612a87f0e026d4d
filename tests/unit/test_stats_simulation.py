"""Seeded simulations: error rates hold under continuous monitoring (a look after every batch), fast enough for CI.

The 1,000-repetition version with the Kayenta-style and Flagger-style comparison is bench/decisions.py.
Counts are checked against a binomial tail: P(count > limit) < 1 % when the true rate is the nominal one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import pytest
from scipy.stats import binom, norm

from controller import confseq, stats
from controller.confseq import bounded_mean_bounds, quantile_ranks
from controller.observations import ArmObservations, Observations, PairedCounts
from controller.stats import evaluate
from modelroll.types import Criteria, Verdict

LEVELS = np.array([0.0, 0.5, 1.0])


def allowed(runs: int, rate: float) -> int:
    """Largest count still consistent (at 1 %) with a true rate of `rate` over `runs` runs."""
    return int(binom.ppf(0.99, runs, rate))


def latencies(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    values = rng.lognormal(math.log(20.0 * scale), 0.35, n)
    stalls = rng.random(n) < 0.005
    values[stalls] *= rng.uniform(5.0, 20.0, int(stalls.sum()))
    return values


def arm(n: int, *, latency: np.ndarray | None = None, errors: int = 0, memory: np.ndarray | None = None,
        labelled: int = 0, correct: int = 0) -> ArmObservations:
    return ArmObservations(
        latency_ms=latency if latency is not None else np.full(n, 10.0), requests=n, errors=errors,
        memory_bytes=memory if memory is not None else np.full(20, 1e8), labelled=labelled, correct=correct)


def _fixed_horizon_mean_bounds(levels: np.ndarray, counts: np.ndarray, alphas: np.ndarray | float
                              ) -> tuple[np.ndarray, np.ndarray]:
    """A Wald interval: valid once, at a sample size fixed in advance - what a peeker would use."""
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    n = np.maximum(counts.sum(axis=1), 1.0)
    mean = counts @ levels / n
    variance = (counts * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
    half = norm.isf(np.broadcast_to(alphas, n.shape)) * np.sqrt(variance / n)
    return np.clip(mean - half, 0.0, 1.0), np.clip(mean + half, 0.0, 1.0)


def ever(runs: int, looks: range, seed: int, make: Callable[[np.random.Generator], Callable[[int], Observations]],
         criteria: Criteria, names: tuple[str, ...], verdict: Verdict) -> dict[str, int]:
    """For each criterion in `names`, in how many runs it reached `verdict` at some look."""
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys(names, 0)
    for _ in range(runs):
        observe = make(rng)
        reached: set[str] = set()
        for n in looks:
            reached |= {r.criterion for r in evaluate(criteria, observe(n)) if r.criterion in names
                        and r.verdict is verdict}
            if len(reached) == len(names):
                break
        for name in reached:
            hits[name] += 1
    return hits


# ---- the primitives cover the truth at every look; a fixed-horizon interval does not ------------------------

@pytest.mark.parametrize("p", [0.5, 0.95])
def test_quantile_sequence_covers_at_every_look_where_a_fixed_interval_fails(p: float) -> None:
    rng = np.random.default_rng(11)
    runs, n_max, alpha = 300, 3000, 0.05
    truth = -math.log(1 - p)  # quantile of Exp(1)
    z = 1.6448536269514722  # one-sided 5 %, the fixed-horizon interval a peeker would use
    misses = naive_misses = 0
    for _ in range(runs):
        draws = rng.exponential(1.0, n_max)
        missed = naive_missed = False
        for n in range(50, n_max + 1, 50):
            ordered = np.sort(draws[:n])
            ranks = quantile_ranks(n, p, alpha, 50)
            low = ordered[ranks.low - 1] if ranks.low >= 1 else -math.inf
            high = ordered[ranks.high - 1] if ranks.high <= n else math.inf
            missed |= not low <= truth <= high
            half = z * math.sqrt(n * p * (1 - p))
            naive_low = ordered[max(math.floor(n * p - half), 1) - 1]
            naive_high = ordered[min(math.ceil(n * p + half), n) - 1]
            naive_missed |= not naive_low <= truth <= naive_high
        misses += missed
        naive_misses += naive_missed
    assert misses <= allowed(runs, 2 * alpha), f"{misses} of {runs} runs missed the true p{p * 100:.0f}"
    assert naive_misses > allowed(runs, 2 * alpha), "the simulation must be able to catch a peeking interval"


@pytest.mark.parametrize("probabilities", [(0.9, 0.0, 0.1), (0.03, 0.94, 0.03), (0.05, 0.9, 0.05)])
def test_betting_sequence_covers_at_every_look(probabilities: tuple[float, float, float]) -> None:
    rng = np.random.default_rng(12)
    runs, n_max, alpha = 200, 5000, 0.05
    truth = float(np.dot(probabilities, LEVELS))
    draws = rng.choice(3, size=(runs, n_max), p=probabilities)
    cumulative = np.stack([np.cumsum(draws == j, axis=1) for j in range(3)], axis=2)  # (runs, n, 3)
    missed = np.zeros(runs, dtype=bool)
    naive_missed = np.zeros(runs, dtype=bool)
    for n in range(200, n_max + 1, 200):
        low, high = bounded_mean_bounds(LEVELS, cumulative[:, n - 1, :], alpha)
        missed |= (low > truth) | (high < truth)
        naive_low, naive_high = _fixed_horizon_mean_bounds(LEVELS, cumulative[:, n - 1, :], alpha)
        naive_missed |= (naive_low > truth) | (naive_high < truth)
    assert missed.sum() <= allowed(runs, 2 * alpha), f"{missed.sum()} of {runs} runs missed the true mean"
    assert naive_missed.sum() > allowed(runs, 2 * alpha), "the simulation must be able to catch a peeking interval"


# ---- end to end: false promotion at the boundary stays below each criterion's share of alpha ---------------

# A loose overall alpha (0.25, so 0.05 per criterion and 0.025 per side) makes these checks sharper, and so does a
# baseline whose figure is known exactly (constant latency and memory, no errors): then only the candidate's bound
# can be wrong, with probability at most alpha / 4 per criterion; a peeking interval is caught (see the mutants in
# test_fixed_horizon_bounds_would_fail_these_checks).
LOOSE = Criteria(alpha=0.25)
PER_SIDE = LOOSE.alpha / 5 / 2


def latency_at_boundary(p: float) -> Callable[[np.random.Generator], Callable[[int], Observations]]:
    """Baseline always 20 ms; candidate lognormal whose p-quantile is exactly 0.5 × 20 ms."""
    z = {0.5: 0.0, 0.95: 1.6448536269514722}[p]

    def make(rng: np.random.Generator) -> Callable[[int], Observations]:
        cand = np.exp(math.log(20.0 * LOOSE.latency_ratio_max) - 0.35 * z + 0.35 * rng.standard_normal(4000))
        return lambda n: Observations(arm(n, latency=np.full(n, 20.0)), arm(n, latency=cand[:n]), PairedCounts())
    return make


def memory_at_boundary(rng: np.random.Generator) -> Callable[[int], Observations]:
    cand = LOOSE.memory_ratio_max * 1e9 * (1 + 0.01 * rng.standard_normal(200))
    return lambda n: Observations(arm(n, memory=np.full(n // 50, 1e9)), arm(n, memory=cand[: n // 50]), PairedCounts())


def errors_at_tolerance(rng: np.random.Generator) -> Callable[[int], Observations]:
    cand = np.cumsum(rng.random(10_000) < LOOSE.error_rate_tolerance)
    return lambda n: Observations(arm(n, errors=0), arm(n, errors=int(cand[n - 1])), PairedCounts())


def accuracy_at_budget(rng: np.random.Generator) -> Callable[[int], Observations]:
    kinds = np.cumsum(np.eye(4, dtype=np.int64)[rng.choice(4, 10_000, p=[0.865, 0.035, 0.015, 0.085])], axis=0)
    return lambda n: Observations(arm(n), arm(n), PairedCounts(*(int(v) for v in kinds[n - 1])))


BOUNDARIES = [
    ("latency_p50", latency_at_boundary(0.5), range(200, 4001, 200)),
    ("latency_p95", latency_at_boundary(0.95), range(200, 4001, 200)),
    ("memory", memory_at_boundary, range(1000, 10_001, 1000)),
    ("errors", errors_at_tolerance, range(1000, 10_001, 1000)),
    ("accuracy", accuracy_at_budget, range(500, 10_001, 500)),
]


@pytest.mark.parametrize("criterion, make, looks", BOUNDARIES, ids=[b[0] for b in BOUNDARIES])
def test_candidate_exactly_at_the_boundary_is_almost_never_promoted(
        criterion: str, make: Callable[[np.random.Generator], Callable[[int], Observations]], looks: range) -> None:
    runs = 60
    passes = ever(runs, looks, 21, make, LOOSE, (criterion,), Verdict.PASS)[criterion]
    assert passes <= allowed(runs, PER_SIDE), f"{criterion} passed at the boundary in {passes} of {runs} runs"


@pytest.mark.parametrize("criterion", ["latency_p95", "accuracy"])
def test_fixed_horizon_bounds_would_fail_these_checks(criterion: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The boundary checks have teeth: swap in a fixed-horizon interval at the usual 5 % and they catch it."""
    if criterion == "accuracy":
        monkeypatch.setattr(stats, "bounded_mean_bounds",
                            lambda levels, counts, alphas: _fixed_horizon_mean_bounds(levels, counts, 0.05))
    else:
        z = NormalDist().inv_cdf(0.95)
        monkeypatch.setattr(confseq, "stitched_boundary", lambda v, alpha, v_min, c: z * math.sqrt(v))
    _, make, looks = next(b for b in BOUNDARIES if b[0] == criterion)
    runs = 60
    passes = ever(runs, looks, 21, make, LOOSE, (criterion,), Verdict.PASS)[criterion]
    assert passes > allowed(runs, PER_SIDE), f"a peeking interval passed only {passes} of {runs} runs"


def test_both_arms_noisy_at_the_latency_boundary_is_almost_never_promoted() -> None:
    def make(rng: np.random.Generator) -> Callable[[int], Observations]:
        base, cand = latencies(rng, 4000, 1.0), latencies(rng, 4000, LOOSE.latency_ratio_max)
        return lambda n: Observations(arm(n, latency=base[:n]), arm(n, latency=cand[:n]), PairedCounts())

    runs = 60
    passes = ever(runs, range(400, 4001, 400), 25, make, LOOSE, ("latency_p50", "latency_p95"), Verdict.PASS)
    for criterion, count in passes.items():
        assert count <= allowed(runs, PER_SIDE), f"{criterion} passed at the boundary in {count} of {runs} runs"


# ---- A/A: no change, every interval covers the truth (ratio 1, difference 0) at every look ------------------

@pytest.mark.parametrize("alpha, shadow", [(0.05, True), (0.25, False)])
def test_no_change_intervals_miss_the_truth_less_often_than_alpha(alpha: float, shadow: bool) -> None:
    rng = np.random.default_rng(31)
    criteria, runs, n_max = Criteria(alpha=alpha), 80, 4000
    truth = {"latency_p50": 1.0, "latency_p95": 1.0, "memory": 1.0, "accuracy": 0.0, "errors": 0.0}
    misses = 0
    for _ in range(runs):
        lat = [latencies(rng, n_max, 1.0) for _ in range(2)]
        mem = [3e8 * (1 + 0.01 * rng.standard_normal(n_max // 50)) for _ in range(2)]
        err = [np.cumsum(rng.random(n_max) < 0.01) for _ in range(2)]
        right = [np.cumsum(rng.random(n_max) < 0.9) for _ in range(2)]
        kinds = np.cumsum(np.eye(4, dtype=np.int64)[rng.choice(4, n_max, p=[0.88, 0.02, 0.02, 0.08])], axis=0)
        missed = False
        for n in range(400, n_max + 1, 400):
            arms = [arm(n, latency=lat[i][:n], errors=int(err[i][n - 1]), memory=mem[i][: n // 50], labelled=n,
                        correct=int(right[i][n - 1])) for i in range(2)]
            paired = PairedCounts(*(int(v) for v in kinds[n - 1])) if shadow else PairedCounts()
            for r in evaluate(criteria, Observations(arms[0], arms[1], paired)):
                low = -math.inf if r.ci_low is None else r.ci_low
                high = math.inf if r.ci_high is None else r.ci_high
                missed |= not low <= truth[r.criterion] <= high
        misses += missed
    assert misses <= allowed(runs, alpha), f"an interval missed the truth in {misses} of {runs} A/A runs"


# ---- power: the good, the broken and the 3-point drop are decided, and fast ---------------------------------

def test_clearly_good_candidate_is_promoted_within_three_thousand_requests() -> None:
    def make(rng: np.random.Generator) -> Callable[[int], Observations]:
        base, cand = latencies(rng, 3000, 1.0), latencies(rng, 3000, 0.35)
        mem = [1e9 * (1 + 0.01 * rng.standard_normal(60)), 3e8 * (1 + 0.01 * rng.standard_normal(60))]
        kinds = np.cumsum(np.eye(4, dtype=np.int64)[rng.choice(4, 3000, p=[0.885, 0.015, 0.015, 0.085])], axis=0)
        return lambda n: Observations(arm(n, latency=base[:n], memory=mem[0][: n // 50]),
                                      arm(n, latency=cand[:n], memory=mem[1][: n // 50]),
                                      PairedCounts(*(int(v) for v in kinds[n - 1])))

    rng = np.random.default_rng(41)
    promoted = 0
    for _ in range(30):
        observe = make(rng)
        promoted += any(all(r.verdict is Verdict.PASS for r in evaluate(Criteria(), observe(n)))
                        for n in range(250, 3001, 250))
    assert promoted >= 27, f"promoted in only {promoted} of 30 runs within 3,000 requests per arm"


def test_error_burst_is_rolled_back_at_the_first_verdict() -> None:
    def make(rng: np.random.Generator) -> Callable[[int], Observations]:
        cand = np.cumsum(rng.random(200) < 0.2)
        return lambda n: Observations(arm(n, errors=0), arm(n, errors=int(cand[n - 1])), PairedCounts())

    assert ever(50, range(200, 201), 42, make, Criteria(), ("errors",), Verdict.FAIL) == {"errors": 50}


def test_three_point_accuracy_drop_is_rolled_back_within_twenty_thousand_pairs() -> None:
    def make(rng: np.random.Generator) -> Callable[[int], Observations]:
        kinds = np.cumsum(np.eye(4, dtype=np.int64)[rng.choice(4, 20_000, p=[0.86, 0.04, 0.01, 0.09])], axis=0)
        return lambda n: Observations(arm(n), arm(n), PairedCounts(*(int(v) for v in kinds[n - 1])))

    runs = 30
    failed = ever(runs, range(500, 20_001, 500), 43, make, Criteria(), ("accuracy",), Verdict.FAIL)["accuracy"]
    assert failed >= 27, f"rolled back in only {failed} of {runs} runs"
