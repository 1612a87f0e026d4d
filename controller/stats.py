"""Per-criterion verdicts (pass / fail / undecided) from anytime-valid confidence sequences, valid at every look.

Latency p50/p95 and memory: quantile CS per arm (Howard & Ramdas, Bernoulli 2022) turned into a ratio
interval, memory from exact readings only (controller/memory_gate.py: runners that cannot measure, offline
gating). Accuracy (paired or unpaired) and errors: betting CS for bounded means (Waudby-Smith & Ramdas,
JRSS-B 2024). The overall alpha is split equally (Bonferroni) over the five criteria; see docs/statistics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from controller import memory_gate
from controller.confseq import Interval, bounded_mean_bounds, quantile_intervals
from controller.observations import ArmObservations, Observations
from modelroll.errors import InvalidInput
from modelroll.types import Criteria, CriterionResult, MemorySource, Verdict

CRITERIA = ("latency_p50", "latency_p95", "memory", "accuracy", "errors")
MEMORY_MIN_READINGS = 10  # gauge readings per arm before a memory verdict; also where its boundary is tightest
# With shadow pairs, the accuracy budget goes mostly to the paired sequence; the unpaired one keeps the rest so that
# labels of served traffic still count when pairs stop growing (after the shadow steps).
PAIRED_SHARE = 0.8
_LEVELS = np.array([0.0, 0.5, 1.0])  # values of a Bernoulli draw (0, 1) or of a rescaled paired difference


def criterion_alpha(criteria: Criteria) -> float:
    """Each criterion's share of the overall alpha: Bonferroni over the five criteria."""
    return criteria.alpha / len(CRITERIA)


def overall(results: Sequence[CriterionResult]) -> Verdict:
    """FAIL if any criterion fails, PASS if all pass, UNDECIDED otherwise (also for no results)."""
    verdicts = [r.verdict for r in results]
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if verdicts and all(v is Verdict.PASS for v in verdicts):
        return Verdict.PASS
    return Verdict.UNDECIDED


def evaluate(criteria: Criteria, obs: Observations) -> list[CriterionResult]:
    """One result per criterion, in CRITERIA order; a pure function of the observations."""
    _check(obs)
    alpha = criterion_alpha(criteria)
    latency = _latency(criteria, obs, alpha)
    low, high = _mean_bounds(obs, alpha)
    return [
        *latency,
        _memory(criteria, obs, alpha),
        _accuracy(criteria, obs, alpha, low[:-2], high[:-2]),
        _errors(criteria, obs, alpha, low[-2:], high[-2:]),
    ]


def _mean_bounds(obs: Observations, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """All bounded-mean bounds of one look in one vectorized call: [paired], base and cand accuracy, both error rates.

    Paired: d = candidate right - baseline right in {-1, 0, 1} as (d + 1) / 2, PAIRED_SHARE of alpha/2 per side.
    Unpaired accuracy (the rest of the accuracy budget) and error rates: one row per arm, a quarter per side each.
    """
    base, cand, paired = obs.baseline, obs.candidate, obs.paired
    rows: list[list[int]] = []
    alphas: list[float] = []
    unpaired_share = 1.0
    if paired.n > 0:
        rows.append([paired.baseline_only, paired.both_correct + paired.neither, paired.candidate_only])
        alphas.append(PAIRED_SHARE * alpha / 2.0)
        unpaired_share = 1.0 - PAIRED_SHARE
    rows += [[base.labelled - base.correct, 0, base.correct], [cand.labelled - cand.correct, 0, cand.correct]]
    alphas += [unpaired_share * alpha / 4.0] * 2
    rows += [[base.requests - base.errors, 0, base.errors], [cand.requests - cand.errors, 0, cand.errors]]
    alphas += [alpha / 4.0] * 2
    return bounded_mean_bounds(_LEVELS, np.array(rows), np.array(alphas))


def _check(obs: Observations) -> None:
    for role, arm in (("baseline", obs.baseline), ("candidate", obs.candidate)):
        counts = {"requests": arm.requests, "errors": arm.errors, "labelled": arm.labelled, "correct": arm.correct}
        for name, value in counts.items():
            if value < 0:
                raise InvalidInput(f"{role} {name} must be >= 0, got {value}")
        if arm.errors > arm.requests:
            raise InvalidInput(f"{role} errors ({arm.errors}) cannot exceed its requests ({arm.requests})")
        if arm.correct > arm.labelled:
            raise InvalidInput(f"{role} correct ({arm.correct}) cannot exceed its labelled ({arm.labelled})")
    paired = obs.paired
    if min(paired.both_correct, paired.baseline_only, paired.candidate_only, paired.neither) < 0:
        raise InvalidInput(f"paired counts must be >= 0, got {paired}")


def _clean(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Finite, non-negative readings and how many others were dropped (a latency or memory cannot be < 0)."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values) & (values >= 0)
    if ok.all():
        return values, 0
    return values[ok], int(values.size - np.count_nonzero(ok))


def _ratio(base: Interval, cand: Interval) -> tuple[float, float, float]:
    """Interval of cand/base from per-arm intervals: [L_c / U_b, U_c / L_b] (both arms are >= 0)."""
    low = max(cand.low, 0.0) / base.high if base.high > 0 else 0.0
    high = cand.high / base.low if base.low > 0 else math.inf
    estimate = cand.estimate / base.estimate if base.estimate > 0 else math.inf
    return low, estimate, high


def _upper_limit_verdict(low: float, high: float, limit: float) -> Verdict:
    """For a figure that must stay <= limit (ratios, error difference): pass when its upper end is within it."""
    if high <= limit:
        return Verdict.PASS
    if low > limit:
        return Verdict.FAIL
    return Verdict.UNDECIDED


def _word(verdict: Verdict) -> str:
    return {Verdict.PASS: "passes", Verdict.FAIL: "fails", Verdict.UNDECIDED: "not decided yet"}[verdict]


def _num(value: float | None, fmt: str = ".2f") -> str:
    if value is None or math.isnan(value):
        return "?"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return format(value, fmt)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _not_enough(name: str, threshold: float, method: str, have: tuple[int, int], need: int,
                what: str = "samples") -> CriterionResult:
    return CriterionResult(
        criterion=name, verdict=Verdict.UNDECIDED, estimate=None, ci_low=None, ci_high=None,
        threshold=threshold, baseline_value=None, candidate_value=None,
        baseline_n=have[0], candidate_n=have[1], method=method,
        message=f"not enough {what} yet: {min(have)} of {need} per arm",
    )


def _latency(criteria: Criteria, obs: Observations, alpha: float) -> list[CriterionResult]:
    limit = criteria.latency_ratio_max
    # The ratio's upper end uses the candidate's upper and the baseline's lower bound: alpha/4 each per side.
    arm_alpha = alpha / 4.0
    method = f"quantile confidence sequence ratio (Howard & Ramdas 2022), alpha {alpha:.4g}"
    base, base_dropped = _clean(obs.baseline.latency_ms)
    cand, cand_dropped = _clean(obs.candidate.latency_ms)
    have = (int(base.size), int(cand.size))
    names = (("latency_p50", "p50", 0.5), ("latency_p95", "p95", 0.95))
    if min(have) < criteria.min_samples:
        return [_not_enough(name, limit, method, have, criteria.min_samples) for name, _, _ in names]
    ps = tuple(p for _, _, p in names)
    base_iv = quantile_intervals(base, ps, arm_alpha, criteria.min_samples)
    cand_iv = quantile_intervals(cand, ps, arm_alpha, criteria.min_samples)
    dropped = base_dropped + cand_dropped
    note = f" ({dropped} invalid latency values ignored)" if dropped else ""
    results = []
    for (name, label, _), b, c in zip(names, base_iv, cand_iv, strict=True):
        low, estimate, high = _ratio(b, c)
        verdict = _upper_limit_verdict(low, high, limit)
        results.append(CriterionResult(
            criterion=name, verdict=verdict, estimate=_finite(estimate), ci_low=_finite(low), ci_high=_finite(high),
            threshold=limit, baseline_value=b.estimate, candidate_value=c.estimate,
            baseline_n=have[0], candidate_n=have[1], method=method,
            message=(f"candidate {label} is {_num(estimate)}× baseline [{_num(low)}, {_num(high)}], "
                     f"needs ≤ {limit:.2f}×: {_word(verdict)}{note}"),
        ))
    return results


def _offline_note(base: ArmObservations, cand: ArmObservations) -> str:
    """The optimizer's offline figure, shown beside the live one; it never decides."""
    if cand.offline_memory_bytes is None:
        return ""
    if base.offline_memory_bytes:
        return f" (offline {cand.offline_memory_bytes / base.offline_memory_bytes:.2f}×)"
    return f" (offline candidate {cand.offline_memory_bytes / 1e6:.0f} MB)"


def _memory(criteria: Criteria, obs: Observations, alpha: float) -> CriterionResult:
    if criteria.memory_source is MemorySource.OFFLINE:
        return memory_gate.offline(criteria, obs)
    limit = criteria.memory_ratio_max
    method = f"median confidence sequence ratio of exact memory readings (Howard & Ramdas 2022), alpha {alpha:.4g}"
    base, _ = _clean(obs.baseline.memory_bytes)
    cand, _ = _clean(obs.candidate.memory_bytes)
    readings = (int(base.size), int(cand.size))
    unmeasured = memory_gate.unmeasured(obs)
    # Said as soon as a runner reports it cannot measure: waiting for samples would never make it measurable.
    if unmeasured and min(readings) < MEMORY_MIN_READINGS:
        return memory_gate.not_measurable(limit, method, readings, sorted(unmeasured))
    requests = (obs.baseline.requests, obs.candidate.requests)
    if min(requests) < criteria.min_samples:
        return _not_enough("memory", limit, method, requests, criteria.min_samples)
    if min(readings) < MEMORY_MIN_READINGS:
        return _not_enough("memory", limit, method, readings, MEMORY_MIN_READINGS, "memory readings")
    (b,) = quantile_intervals(base, (0.5,), alpha / 4.0, MEMORY_MIN_READINGS)
    (c,) = quantile_intervals(cand, (0.5,), alpha / 4.0, MEMORY_MIN_READINGS)
    low, estimate, high = _ratio(b, c)
    verdict = _upper_limit_verdict(low, high, limit)
    offline_note = _offline_note(obs.baseline, obs.candidate)
    ignored = memory_gate.ignored_note(unmeasured)
    return CriterionResult(
        criterion="memory", verdict=verdict, estimate=_finite(estimate), ci_low=_finite(low), ci_high=_finite(high),
        threshold=limit, baseline_value=b.estimate, candidate_value=c.estimate,
        baseline_n=readings[0], candidate_n=readings[1], method=method,
        message=(f"candidate memory is {_num(estimate)}× baseline [{_num(low)}, {_num(high)}]{offline_note}{ignored}, "
                 f"needs ≤ {limit:.2f}×: {_word(verdict)}"),
    )


def _lower_limit_verdict(low: float, high: float, limit: float) -> Verdict:
    """For a figure that must stay >= limit (accuracy difference): pass when its lower end clears it."""
    if low >= limit:
        return Verdict.PASS
    if high < limit:
        return Verdict.FAIL
    return Verdict.UNDECIDED


def _points(value: float) -> str:
    return f"{value * 100:+.1f}".replace("-", "−")


def _accuracy(criteria: Criteria, obs: Observations, alpha: float, lo: np.ndarray, hi: np.ndarray
              ) -> CriterionResult:
    limit = -criteria.accuracy_drop_max
    base, cand, paired = obs.baseline, obs.candidate, obs.paired
    if criteria.accuracy_drop_max >= 1.0:
        return CriterionResult(
            criterion="accuracy", verdict=Verdict.PASS, estimate=None, ci_low=None, ci_high=None,
            threshold=limit, baseline_value=None, candidate_value=None, baseline_n=base.labelled,
            candidate_n=cand.labelled, method="not gated",
            message="accuracy is not gated: accuracy_drop_max is 1.0 (any drop allowed): passes",
        )
    labelled = (base.labelled, cand.labelled)
    if paired.n > 0:
        method = (f"paired betting confidence sequence on shadow pairs ∩ unpaired per arm "
                  f"(Waudby-Smith & Ramdas 2024), alpha {alpha:.4g}")
        if paired.n < criteria.min_samples and min(labelled) < criteria.min_samples:
            return _not_enough("accuracy", limit, method, (paired.n, paired.n), criteria.min_samples,
                               "labelled shadow pairs")
    else:
        method = f"unpaired betting confidence sequences per arm (Waudby-Smith & Ramdas 2024), alpha {alpha:.4g}"
        if min(labelled) < criteria.min_samples:
            return _not_enough("accuracy", limit, method, labelled, criteria.min_samples, "labelled predictions")
    # Both sequences hold at once (their alphas add up to the criterion's), so their intersection does too.
    uo = 1 if paired.n > 0 else 0  # offset of the unpaired rows
    low, high = float(lo[uo + 1] - hi[uo]), float(hi[uo + 1] - lo[uo])
    if paired.n > 0:
        low, high = max(low, 2.0 * float(lo[0]) - 1.0), min(high, 2.0 * float(hi[0]) - 1.0)
    if paired.n >= criteria.min_samples:
        base_acc = (paired.both_correct + paired.baseline_only) / paired.n
        cand_acc = (paired.both_correct + paired.candidate_only) / paired.n
        counts, source = (paired.n, paired.n), f" ({paired.n} shadow pairs)"
    else:
        base_acc, cand_acc = base.correct / base.labelled, cand.correct / cand.labelled
        counts, source = labelled, f" ({labelled[0]} and {labelled[1]} labelled, unpaired)"
    if low > high:  # only if one sequence missed (rare) or shadow and served traffic differ: say so, decide nothing
        return CriterionResult(
            criterion="accuracy", verdict=Verdict.UNDECIDED, estimate=cand_acc - base_acc, ci_low=None,
            ci_high=None, threshold=limit, baseline_value=base_acc, candidate_value=cand_acc,
            baseline_n=counts[0], candidate_n=counts[1], method=method,
            message=(f"accuracy: shadow pairs and served traffic disagree (paired {_points(2 * float(lo[0]) - 1)} to "
                     f"{_points(2 * float(hi[0]) - 1)} points, unpaired {_points(float(lo[2] - hi[1]))} to "
                     f"{_points(float(hi[2] - lo[1]))}): not decided yet"),
        )
    estimate = min(max(cand_acc - base_acc, low), high)  # the point of the interval nearest the raw difference
    verdict = _lower_limit_verdict(low, high, limit)
    return CriterionResult(
        criterion="accuracy", verdict=verdict, estimate=estimate, ci_low=low, ci_high=high, threshold=limit,
        baseline_value=base_acc, candidate_value=cand_acc, baseline_n=counts[0], candidate_n=counts[1],
        method=method,
        message=(f"accuracy {_points(estimate)} points [{_points(low)}, {_points(high)}] "
                 f"vs budget {_points(limit)}{source}: {_word(verdict)}"),
    )


def _errors(criteria: Criteria, obs: Observations, alpha: float, lo: np.ndarray, hi: np.ndarray) -> CriterionResult:
    limit = criteria.error_rate_tolerance
    base, cand = obs.baseline, obs.candidate
    method = f"betting confidence sequences on each arm's error rate (Waudby-Smith & Ramdas 2024), alpha {alpha:.4g}"
    counts = (base.requests, cand.requests)
    if min(counts) < criteria.min_samples:
        return _not_enough("errors", limit, method, counts, criteria.min_samples)
    low, high = float(lo[1] - hi[0]), float(hi[1] - lo[0])
    base_rate, cand_rate = base.errors / base.requests, cand.errors / cand.requests
    estimate = cand_rate - base_rate
    verdict = _upper_limit_verdict(low, high, limit)
    return CriterionResult(
        criterion="errors", verdict=verdict, estimate=estimate, ci_low=low, ci_high=high, threshold=limit,
        baseline_value=base_rate, candidate_value=cand_rate, baseline_n=counts[0], candidate_n=counts[1],
        method=method,
        message=(f"candidate error rate {cand_rate:.2%} vs baseline {base_rate:.2%}: difference "
                 f"{_points(estimate)} points [{_points(low)}, {_points(high)}], allowed ≤ {_points(limit)}: "
                 f"{_word(verdict)}"),
    )
