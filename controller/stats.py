"""Per-criterion verdicts (pass / fail / undecided) from anytime-valid confidence sequences, valid at every look.

Latency p50/p95 and memory: quantile CS per arm (Howard & Ramdas, Bernoulli 2022, exact) turned into a ratio
interval, memory from exact readings only (controller/memory_gate.py). Accuracy (controller/accuracy.py) and errors
(controller/guardrail.py): asymptotic normal-mixture CS on the difference (controller/difference.py). Each look's
interval is intersected with the running one carried in the observations, so verdicts never go back. The alpha
allocation (ALPHA_SHARES) and why: docs/statistics.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from controller import accuracy, criterion, guardrail, memory_gate
from controller.confseq import Interval, quantile_intervals
from controller.observations import ArmObservations, Observations
from modelroll.errors import InvalidInput
from modelroll.types import Criteria, CriterionResult, MemorySource, Verdict

CRITERIA = ("latency_p50", "latency_p95", "memory", "accuracy", "errors")
MEMORY_MIN_READINGS = 10  # gauge readings per arm before a memory verdict; also where its boundary is tightest


@dataclasses.dataclass(frozen=True, slots=True)
class Share:
    """A criterion's share of the overall alpha on each side of its interval."""

    pass_side: float  # the side that could promote a candidate that misses the criterion
    fail_side: float  # the side that could roll back a candidate that meets it


# Where the budget goes (shares of Criteria.alpha, summing to 1: every interval covers its truth at every look at
# once with probability >= 1 - alpha). Every pass side gets at most alpha / 10, so a candidate that misses any one
# criterion is promoted with probability <= alpha / 10 (promotion needs every criterion to pass). The fail sides
# get the rest, mostly where rollbacks must be fast and cannot be by a wide margin: an accuracy drop just beyond the
# budget, an error rate a few times the baseline's. Latency and memory candidates are far from their limits
# (or plainly beyond them), so a small share decides them about as fast.
ALPHA_SHARES: Mapping[str, Share] = {
    "latency_p50": Share(0.05, 0.05),
    "latency_p95": Share(0.05, 0.05),
    "memory": Share(0.05, 0.05),
    "accuracy": Share(0.10, 0.30),
    "errors": Share(0.10, 0.20),
}


def alphas(criteria: Criteria, name: str) -> tuple[float, float]:
    """(pass side, fail side) alpha of one criterion."""
    share = ALPHA_SHARES[name]
    return criteria.alpha * share.pass_side, criteria.alpha * share.fail_side


def overall(results: Sequence[CriterionResult]) -> Verdict:
    """FAIL if any criterion fails, PASS if all pass, UNDECIDED otherwise (also for no results)."""
    verdicts = [r.verdict for r in results]
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if verdicts and all(v is Verdict.PASS for v in verdicts):
        return Verdict.PASS
    return Verdict.UNDECIDED


def evaluate(criteria: Criteria, obs: Observations) -> list[CriterionResult]:
    """One result per criterion, in CRITERIA order; a pure function of the observations (and what they carry)."""
    _check(obs)
    return [
        *_latency(criteria, obs),
        _memory(criteria, obs),
        accuracy.evaluate(criteria, obs, *alphas(criteria, "accuracy")),
        guardrail.evaluate(criteria, obs, *alphas(criteria, "errors")),
    ]


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
    agreement = obs.agreement
    labelled = agreement.baseline_only + agreement.candidate_only + agreement.neither
    if agreement.n and (np.any(agreement.disagree > agreement.pairs) or np.any(labelled > agreement.disagree)
                        or min(int(a.min()) for a in (agreement.pairs, agreement.baseline_only,
                                                      agreement.candidate_only, agreement.neither)) < 0):
        raise InvalidInput("agreement counts must be >= 0, with disagreements <= pairs and labelled disagreements "
                           "<= disagreements in every block")
    for name, blocks in (("labels", obs.labels), ("requests", obs.requests)):
        if blocks is not None and (np.any(blocks.baseline_hits > blocks.baseline_n)
                                   or np.any(blocks.candidate_hits > blocks.candidate_n)
                                   or np.any(blocks.baseline_hits < 0) or np.any(blocks.candidate_hits < 0)):
            raise InvalidInput(f"{name} blocks must have 0 <= hits <= n in every block")


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


def _ratio_intervals(base: np.ndarray, cand: np.ndarray, ps: tuple[float, ...], name: str, criteria: Criteria,
                     n_min: float) -> list[tuple[Interval, Interval]]:
    """Per-arm quantile intervals whose ratio [L_c / U_b, U_c / L_b] spends each side's alpha half per arm: the upper
    end (pass side) uses the candidate's high and the baseline's low bound, the lower end the other two."""
    alpha_pass, alpha_fail = alphas(criteria, name)
    b = quantile_intervals(base, ps, alpha_pass / 2.0, n_min, alpha_high=alpha_fail / 2.0)
    c = quantile_intervals(cand, ps, alpha_fail / 2.0, n_min, alpha_high=alpha_pass / 2.0)
    return list(zip(b, c, strict=True))


def _ratio_result(name: str, label: str, b: Interval, c: Interval, limit: float,
                  carried: Mapping[str, criterion.Interval], method: str, have: tuple[int, int], note: str = "",
                  what: str = "") -> CriterionResult:
    low_look, estimate, high_look = _ratio(b, c)
    look = (low_look, high_look)
    low, high = criterion.running(carried, name, look)
    sequences = {name: criterion.entry(carried, name, look)}
    if criterion.disagrees(carried, name, look):
        note += criterion.drift_note(f"the {label} ratio", look, carried[name], lambda v: f"{criterion.num(v)}×")
    verdict = criterion.upper_limit_verdict(low, high, limit)
    shown = min(max(estimate, low), high)
    return CriterionResult(
        criterion=name, verdict=verdict, estimate=criterion.finite(shown), ci_low=criterion.finite(low),
        ci_high=criterion.finite(high), threshold=limit, baseline_value=b.estimate, candidate_value=c.estimate,
        baseline_n=have[0], candidate_n=have[1], method=method, sequences=sequences,
        message=(f"candidate {what or label} is {criterion.num(shown)}× baseline [{criterion.num(low)}, "
                 f"{criterion.num(high)}]{note}, needs ≤ {limit:.2f}×: {criterion.word(verdict)}"),
    )


def _latency(criteria: Criteria, obs: Observations) -> list[CriterionResult]:
    limit = criteria.latency_ratio_max
    base, base_dropped = _clean(obs.baseline.latency_ms)
    cand, cand_dropped = _clean(obs.candidate.latency_ms)
    have = (int(base.size), int(cand.size))
    names = (("latency_p50", "p50", 0.5), ("latency_p95", "p95", 0.95))
    methods = {name: (f"quantile confidence sequence ratio (Howard & Ramdas 2022, exact), alpha "
                      f"{alphas(criteria, name)[0]:.4g} pass / {alphas(criteria, name)[1]:.4g} fail")
               for name, _, _ in names}
    if min(have) < criteria.min_samples:
        return [criterion.not_enough(name, limit, methods[name], have, criteria.min_samples, carried=obs.carried,
                                     names=(name,)) for name, _, _ in names]
    # p50 and p95 share one partition per arm when their alphas are the same (the default shares).
    same = ALPHA_SHARES["latency_p50"] == ALPHA_SHARES["latency_p95"]
    ps = tuple(p for _, _, p in names)
    pairs = (_ratio_intervals(base, cand, ps, "latency_p50", criteria, criteria.min_samples) if same else
             [_ratio_intervals(base, cand, (p,), name, criteria, criteria.min_samples)[0] for name, _, p in names])
    dropped = base_dropped + cand_dropped
    note = f" ({dropped} invalid latency values ignored)" if dropped else ""
    results = []
    for (name, label, _), (b, c) in zip(names, pairs, strict=True):
        result = _ratio_result(name, label, b, c, limit, obs.carried, methods[name], have)
        if note:
            result = dataclasses.replace(result, message=result.message + note)
        results.append(result)
    return results


def _offline_note(base: ArmObservations, cand: ArmObservations) -> str:
    """The optimizer's offline figure, shown beside the live one; it never decides."""
    if cand.offline_memory_bytes is None:
        return ""
    if base.offline_memory_bytes:
        return f" (offline {cand.offline_memory_bytes / base.offline_memory_bytes:.2f}×)"
    return f" (offline candidate {cand.offline_memory_bytes / 1e6:.0f} MB)"


def _memory(criteria: Criteria, obs: Observations) -> CriterionResult:
    if criteria.memory_source is MemorySource.OFFLINE:
        return memory_gate.offline(criteria, obs)
    limit = criteria.memory_ratio_max
    alpha_pass, alpha_fail = alphas(criteria, "memory")
    method = (f"median confidence sequence ratio of exact memory readings (Howard & Ramdas 2022, exact), alpha "
              f"{alpha_pass:.4g} pass / {alpha_fail:.4g} fail")
    base, _ = _clean(obs.baseline.memory_bytes)
    cand, _ = _clean(obs.candidate.memory_bytes)
    readings = (int(base.size), int(cand.size))
    unmeasured = memory_gate.unmeasured(obs)
    kept = criterion.carried_through(obs.carried, ("memory",))
    # Said as soon as a runner reports it cannot measure: waiting for samples would never make it measurable.
    if unmeasured and min(readings) < MEMORY_MIN_READINGS:
        return dataclasses.replace(memory_gate.not_measurable(limit, method, readings, sorted(unmeasured)),
                                   sequences=kept)
    requests = (obs.baseline.requests, obs.candidate.requests)
    if min(requests) < criteria.min_samples:
        return criterion.not_enough("memory", limit, method, requests, criteria.min_samples, carried=obs.carried,
                                    names=("memory",))
    if min(readings) < MEMORY_MIN_READINGS:
        return criterion.not_enough("memory", limit, method, readings, MEMORY_MIN_READINGS, "memory readings",
                                    carried=obs.carried, names=("memory",))
    ((b, c),) = _ratio_intervals(base, cand, (0.5,), "memory", criteria, MEMORY_MIN_READINGS)
    note = _offline_note(obs.baseline, obs.candidate) + memory_gate.ignored_note(unmeasured)
    return _ratio_result("memory", "memory", b, c, limit, obs.carried, method, readings, note=note)
