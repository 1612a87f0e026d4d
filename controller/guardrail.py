"""The errors guardrail: the candidate fails when its error rate exceeds both the baseline's + the tolerance and
twice the baseline's, with confidence; it passes when it is within either. Pure functions."""

from __future__ import annotations

from controller import criterion as cr
from controller.difference import Side, stratified
from controller.observations import Blocks, Observations
from modelroll.types import Criteria, CriterionResult, Verdict

NAME = "errors"
RELATIVE = "errors_relative"  # candidate - 2 × baseline error rate
# The limit is max(baseline + tolerance, RELATIVE_FACTOR × baseline): a 1-point tolerance is lenient for a 0.1 %
# baseline and strict for a 5 % one, so a candidate may also double the baseline's rate, never more.
RELATIVE_FACTOR = 2.0
# Passing needs one route within its limit: the absolute one (what decides for any baseline below the tolerance)
# gets this share of the pass side's alpha, the relative one the rest. Failing needs both beyond theirs, so each
# fail side has the whole fail alpha: a candidate within one limit is failed only if that sequence missed.
ABSOLUTE_PASS_SHARE = 0.8
# Where each side is tightest, in pseudo-pairs (about half the requests per arm): a healthy candidate passes at
# ~500-2,000, a broken one (5× a 1 % rate) fails at ~300-600.
PASS_AT, FAIL_AT = 1000.0, 400.0


def evaluate(criteria: Criteria, obs: Observations, alpha_pass: float, alpha_fail: float) -> CriterionResult:
    limit = criteria.error_rate_tolerance
    base, cand, carried = obs.baseline, obs.candidate, obs.carried
    method = (f"time-stratified difference of error rates, candidate - baseline and candidate - "
              f"{RELATIVE_FACTOR:g} × baseline (normal mixture, asymptotic; Waudby-Smith et al. 2024), "
              f"alpha {alpha_pass:.4g} pass / {alpha_fail:.4g} fail")
    counts = (base.requests, cand.requests)
    if min(counts) < criteria.min_samples:
        return cr.not_enough(NAME, limit, method, counts, criteria.min_samples, carried=carried,
                             names=(NAME, RELATIVE))
    blocks = obs.requests if obs.requests is not None else Blocks.single(base.requests, base.errors,
                                                                          cand.requests, cand.errors)
    absolute = stratified(blocks, 1.0, Side(alpha_fail, FAIL_AT, False),
                          Side(ABSOLUTE_PASS_SHARE * alpha_pass, PASS_AT, True))
    relative = stratified(blocks, RELATIVE_FACTOR, Side(alpha_fail, FAIL_AT, False),
                          Side((1 - ABSOLUTE_PASS_SHARE) * alpha_pass, PASS_AT, True))
    looks = {NAME: (absolute.low, absolute.high), RELATIVE: (relative.low, relative.high)}
    sequences = {name: cr.entry(carried, name, look) for name, look in looks.items()}
    (a_low, a_high), (r_low, r_high) = (cr.running(carried, name, look) for name, look in looks.items())
    base_rate, cand_rate = base.errors / base.requests, cand.errors / cand.requests
    estimate = cand_rate - base_rate
    if a_high <= limit or r_high <= 0.0:
        verdict = Verdict.PASS
    elif a_low > limit and r_low > 0.0:
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.UNDECIDED
    ci_low, ci_high = cr.finite(a_low), cr.finite(a_high)
    estimate = min(max(estimate, a_low), a_high)
    drift = "".join(cr.drift_note(f"errors ({name})", look, carried[name])
                    for name, look in looks.items() if cr.disagrees(carried, name, look))
    message = (f"candidate error rate {cand_rate:.2%} vs baseline {base_rate:.2%}: difference "
               f"{cr.points(estimate)} points [{cr.points(a_low)}, {cr.points(a_high)}], allowed ≤ "
               f"max({cr.points(limit)} points, {RELATIVE_FACTOR:g}× baseline); candidate − "
               f"{RELATIVE_FACTOR:g}× baseline [{cr.points(r_low)}, {cr.points(r_high)}] vs ≤ 0{drift}: "
               f"{cr.word(verdict)}")
    return CriterionResult(
        criterion=NAME, verdict=verdict, estimate=estimate, ci_low=ci_low, ci_high=ci_high, threshold=limit,
        baseline_value=base_rate, candidate_value=cand_rate, baseline_n=counts[0], candidate_n=counts[1],
        method=method, sequences=sequences, message=message,
    )
