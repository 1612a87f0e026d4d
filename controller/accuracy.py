"""The accuracy criterion: candidate - baseline accuracy from shadow pairs (with a label-free bound from their
agreement) and from the labels of served traffic, both arms stratified by time. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from controller import criterion as cr
from controller.difference import Bounds, Side, paired, stratified
from controller.observations import Agreement, Blocks, Observations
from modelroll.types import Criteria, CriterionResult, Verdict

NAME = "accuracy"
AGREEMENT = "agreement"  # the share of shadow pairs answered alike: shown (with the drop it allows), never decides
# With shadow pairs, the paired sequence gets this share of each side's alpha and the served-traffic one the rest
# (labels of served traffic still count when the shadow steps are over); without pairs the latter gets it all.
PAIRED_SHARE = 0.9
# Where each side is tightest: pairs, or pseudo-pairs of served labels (about half the labels per arm). The pass
# side of a good candidate is decided at ~300-3,000 pairs or ~1,000-5,000 pseudo-pairs; the fail side of a drop
# just beyond the budget near the end of a long run.
PAIRED_PASS_AT, PAIRED_FAIL_AT = 1000.0, 8000.0
SERVED_PASS_AT, SERVED_FAIL_AT = 1500.0, 5000.0


def _pct(value: float) -> str:
    return f"{value * 100:.1f}"


def _paired_stream(agreement: Agreement, obs: Observations, low: Side, high: Side) -> Bounds | None:
    """The best bounds of the paired sequence over the prefixes worth reading: all pairs (a disagreement without
    its label counted at its least favourable value) and the longest prefix whose disagreements are all labelled.
    The sequence holds at every prefix at once, so taking the best one is valid."""
    if agreement.n == 0:
        p = obs.paired
        if p.n == 0:
            return None
        return paired(p.baseline_only, p.both_correct + p.neither, p.candidate_only, 0, low, high)
    best: Bounds | None = None
    for n, minus, plus, unknown in prefixes_worth_reading(agreement):
        b = paired(minus, n - minus - plus - unknown, plus, unknown, low, high)
        best = b if best is None else Bounds(max(best.low, b.low), best.estimate, min(best.high, b.high), best.n)
    return best


def prefixes_worth_reading(agreement: Agreement) -> list[tuple[int, int, int, int]]:
    """(pairs, baseline only right, candidate only right, disagreements without a label) over all pairs, and over
    the longest prefix whose disagreements are all labelled, if that is shorter."""
    pairs, minus, plus = (np.cumsum(a) for a in (agreement.pairs, agreement.baseline_only, agreement.candidate_only))
    unknown = np.cumsum(agreement.disagree - agreement.baseline_only - agreement.candidate_only - agreement.neither)
    prefixes = {len(pairs) - 1}
    settled = np.flatnonzero((unknown == 0) & (pairs > 0))
    if settled.size:
        prefixes.add(int(settled[-1]))
    return [(int(pairs[i]), int(minus[i]), int(plus[i]), int(unknown[i])) for i in sorted(prefixes)]


def _agreement(agreement: Agreement, low: Side, high: Side) -> cr.Interval | None:
    """The share of shadow pairs answered alike, as an interval: 1 - (upper bound of the disagreement) is the
    label-free bound itself (accuracy can drop at most that much)."""
    n, disagree = agreement.n, int(agreement.disagree.sum())
    if n == 0:
        return None
    b = paired(disagree, n - disagree, 0, 0, low, high)  # the mean of -1{disagree}
    return 1.0 + b.low, 1.0 + b.high


def evaluate(criteria: Criteria, obs: Observations, alpha_pass: float, alpha_fail: float) -> CriterionResult:
    limit = -criteria.accuracy_drop_max
    base, cand, agreement = obs.baseline, obs.candidate, obs.agreement
    carried = obs.carried
    names = (NAME, AGREEMENT)
    if criteria.accuracy_drop_max >= 1.0:
        return CriterionResult(
            criterion=NAME, verdict=Verdict.PASS, estimate=None, ci_low=None, ci_high=None,
            threshold=limit, baseline_value=None, candidate_value=None, baseline_n=base.labelled,
            candidate_n=cand.labelled, method="not gated",
            message="accuracy is not gated: accuracy_drop_max is 1.0 (any drop allowed): passes",
        )
    pairs = agreement.n
    labelled = (base.labelled, cand.labelled)
    has_pairs = pairs > 0 or obs.paired.n > 0
    share = PAIRED_SHARE if has_pairs else 0.0
    method = ("paired sequence on shadow pairs with a label-free bound from their agreement ∩ time-stratified "
              "difference of served labels" if has_pairs else
              "unpaired: time-stratified difference of each arm's labelled predictions")
    method += (f" (normal mixture, asymptotic; Waudby-Smith et al. 2024), alpha {alpha_pass:.4g} pass / "
               f"{alpha_fail:.4g} fail")
    if max(pairs, obs.paired.n) < criteria.min_samples and min(labelled) < criteria.min_samples:
        if has_pairs:
            return cr.not_enough(NAME, limit, method, (max(pairs, obs.paired.n),) * 2, criteria.min_samples,
                                 "shadow pairs", carried, names)
        return cr.not_enough(NAME, limit, method, labelled, criteria.min_samples, "labelled predictions",
                             carried, names)
    look: cr.Interval = cr.OPEN
    pair_bounds = _paired_stream(
        agreement, obs, Side(share * alpha_pass, PAIRED_PASS_AT, True),
        Side(share * alpha_fail, PAIRED_FAIL_AT, False)) if has_pairs else None
    if pair_bounds is not None:
        look = (pair_bounds.low, pair_bounds.high)
    blocks = obs.labels if obs.labels is not None else Blocks.single(base.labelled, base.correct,
                                                                      cand.labelled, cand.correct)
    served = stratified(blocks, 1.0, Side((1 - share) * alpha_pass, SERVED_PASS_AT, True),
                        Side((1 - share) * alpha_fail, SERVED_FAIL_AT, False))
    look = (max(look[0], served.low), min(look[1], served.high))
    agree = _agreement(agreement, Side(share * alpha_pass, PAIRED_PASS_AT, True),
                       Side(share * alpha_fail, PAIRED_FAIL_AT, False))
    low, high = cr.running(carried, NAME, look)
    sequences = {NAME: cr.entry(carried, NAME, look)}
    if agree is not None:
        sequences[AGREEMENT] = cr.entry(carried, AGREEMENT, agree)
        agree = cr.running(carried, AGREEMENT, agree)
    elif AGREEMENT in carried:
        sequences[AGREEMENT] = cr.entry(carried, AGREEMENT, None)

    p = obs.paired
    if p.n >= criteria.min_samples:
        base_acc = (p.both_correct + p.baseline_only) / p.n
        cand_acc = (p.both_correct + p.candidate_only) / p.n
        counts, source = (p.n, p.n), (f"{pairs} shadow pairs, {p.n} labelled" if pairs else f"{p.n} shadow pairs")
    elif min(labelled) > 0:
        base_acc, cand_acc = base.correct / base.labelled, cand.correct / cand.labelled
        counts, source = labelled, f"{labelled[0]} and {labelled[1]} labelled, unpaired"
        if pairs:
            source = f"{pairs} shadow pairs, {p.n} labelled; {source}"
    else:
        base_acc = cand_acc = math.nan
        counts, source = (pairs, pairs), f"{pairs} shadow pairs, {p.n} labelled"
    raw = cand_acc - base_acc
    observed = 1.0 - float(agreement.disagree.sum()) / pairs if pairs else math.nan
    note = _agreement_note(observed, agree, limit)
    if look[0] > look[1]:  # the two sequences exclude each other: one missed, or shadow and served traffic differ
        return _undecided(criteria, obs, method, counts, base_acc, cand_acc, sequences,
                          f"accuracy: shadow pairs and served traffic disagree (paired {cr.points(pair_bounds.low)} "
                          f"to {cr.points(pair_bounds.high)} points, served {cr.points(served.low)} to "
                          f"{cr.points(served.high)}){note}: not decided yet" if pair_bounds is not None else
                          "accuracy: its sequences exclude each other: not decided yet")
    if cr.disagrees(carried, NAME, look):
        note += cr.drift_note("accuracy", look, carried[NAME])
    estimate = None if math.isnan(raw) else min(max(raw, low), high)
    verdict = cr.lower_limit_verdict(low, high, limit)
    shown = "?" if estimate is None else cr.points(estimate)
    return CriterionResult(
        criterion=NAME, verdict=verdict, estimate=estimate, ci_low=cr.finite(low), ci_high=cr.finite(high),
        threshold=limit, baseline_value=None if math.isnan(base_acc) else base_acc,
        candidate_value=None if math.isnan(cand_acc) else cand_acc, baseline_n=counts[0], candidate_n=counts[1],
        method=method, sequences=sequences,
        message=(f"accuracy {shown} points [{cr.points(low)}, {cr.points(high)}] vs budget {cr.points(limit)}"
                 f"{note} ({source}): {cr.word(verdict)}"),
    )


def _agreement_note(observed: float, agree: cr.Interval | None, limit: float) -> str:
    """"; agreement 99.6 % [99.4, 99.8] — accuracy can drop at most 0.6 points", and a warning (never a rollback:
    disagreement is not error) when even the fewest disagreements the data allow exceed the budget."""
    if agree is None or agree[0] > agree[1]:
        return ""
    low, high = agree
    centre = min(max(observed, low), high)
    note = (f"; agreement {_pct(centre)} % [{_pct(low)}, {_pct(high)}] — accuracy can drop at most "
            f"{(1.0 - low) * 100:.1f} points")
    if 1.0 - high > -limit:
        note += (f"; warning: the arms answer differently on at least {_pct(1.0 - high)} % of requests, more than "
                 "the budget (not a rollback: disagreement is not error)")
    return note


def _undecided(criteria: Criteria, obs: Observations, method: str, counts: tuple[int, int], base_acc: float,
               cand_acc: float, sequences: Mapping[str, Mapping[str, tuple[float | None, float | None]]],
               message: str) -> CriterionResult:
    raw = cand_acc - base_acc
    return CriterionResult(
        criterion=NAME, verdict=Verdict.UNDECIDED, estimate=None if math.isnan(raw) else raw, ci_low=None,
        ci_high=None, threshold=-criteria.accuracy_drop_max,
        baseline_value=None if math.isnan(base_acc) else base_acc,
        candidate_value=None if math.isnan(cand_acc) else cand_acc, baseline_n=counts[0], candidate_n=counts[1],
        method=method, sequences=sequences, message=message)
