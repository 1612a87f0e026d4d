"""Anytime-valid bounds on a difference of rates, candidate - k × baseline: from shadow pairs, or from both arms'
counts stratified by time. Asymptotic confidence sequences (normal mixture, Waudby-Smith et al. 2024).

Each side is its own one-sided sequence with its own alpha and tuning. A side's variance is read either at the
estimate (plug-in, Wilson-adjusted so that a rate seen as 0 is not taken as certain) or at the bound itself, as a
score test does: that side then stays honest when events are rare (a few errors, a few disagreements).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from controller.confseq import mixture_boundary
from controller.observations import Blocks

WILSON_Z = 1.0  # how far a plug-in rate is moved towards 1/2 before its variance is read
_STEPS = 60  # regula falsi steps at most; a few suffice
_TOLERANCE = 1e-9  # on a difference of rates: far below a displayed 0.1 point


@dataclass(frozen=True, slots=True)
class Side:
    """One side of a sequence: its error, where it is tightest (in pairs, or pseudo-pairs for blocks), and whether
    its variance is read at the bound (null) or at the estimate (plug-in)."""

    alpha: float
    n_opt: float
    null_variance: bool


@dataclass(frozen=True, slots=True)
class Bounds:
    """A difference's estimate and anytime-valid bounds (-inf / inf where a side is not computed)."""

    low: float
    estimate: float
    high: float
    n: float  # pairs, or pseudo-pairs (sum over blocks of n_b n_c / (n_b + n_c))


UNBOUNDED = Bounds(-math.inf, math.nan, math.inf, 0.0)


def _wilson(hits: float, n: float) -> float:
    """A rate moved towards 1/2 by WILSON_Z standard errors (the Wilson score bound): never 0 or 1."""
    z2 = WILSON_Z * WILSON_Z
    centre = (hits + z2 / 2.0) / (n + z2)
    half = WILSON_Z * math.sqrt(max(hits * (n - hits) / n, 0.0) + z2 / 4.0) / (n + z2)
    return min(centre + half, 0.5) if hits / n < 0.5 else max(centre - half, 0.5)


def _solve(estimate: float, reach: float, radius: Callable[[float], float], sign: float) -> float:
    """The bound estimate + sign × D* where D* = sup{D in [0, reach]: D <= radius(estimate + sign × D)}.

    Values beyond it are rejected by the side's test at their own variance (|estimate - theta| > radius(theta)).
    Regula falsi (Illinois) on g(D) = D - radius, which is <= 0 at 0 (= 0 when nothing varies at the estimate:
    then the root is further on) and crosses 0 once; the answer is the bracket's far end, on the conservative
    side, within _TOLERANCE of the root."""
    low, high = 0.0, reach
    g_low, g_high = -radius(estimate), high - radius(estimate + sign * high)
    if g_high <= 0:
        return estimate + sign * reach
    side = 0
    for _ in range(_STEPS):
        if high - low <= _TOLERANCE:
            break
        mid = (low * g_high - high * g_low) / (g_high - g_low)
        if not low < mid < high:
            mid = 0.5 * (low + high)
        g_mid = mid - radius(estimate + sign * mid)
        if g_mid > 0:
            high, g_high = mid, g_mid
            if side == 1:
                g_low /= 2.0
            side = 1
        else:
            low, g_low = mid, g_mid
            if side == -1:
                g_high /= 2.0
            side = -1
    return estimate + sign * high


def paired(minus: int, zero: int, plus: int, unknown: int, low: Side | None, high: Side | None) -> Bounds:
    """Bounds on the mean of d in {-1, 0, 1} (candidate right - baseline right on one request) from n pairs.

    `unknown` pairs have a d not known yet (their label has not come back): the low side counts them as -1 and the
    high side as +1, so each side bounds a sum that is certainly on its safe side of the true one. With every
    disagreement unknown this is the label-free bound: |d| <= 1{the two arms answered differently}.
    The null variance of a mean theta is max(E[d^2], |theta|) - theta^2: no distribution on {-1, 0, 1} with mean
    theta has E[d^2] < |theta|.
    """
    n = minus + zero + plus + unknown
    if n <= 0:
        return UNBOUNDED
    known = n - unknown
    estimate = (plus - minus) / known if known > 0 else math.nan
    lo = hi = math.nan
    for side, sign in ((low, -1.0), (high, 1.0)):
        if side is None:
            continue
        total = plus - minus + sign * unknown  # unknown d counted at their least favourable value for this side
        mean = total / n
        square = (plus + minus + unknown) / n
        scale = float(mixture_boundary(float(n), side.alpha, side.n_opt)) / n
        if side.null_variance:
            def radius(theta: float, square: float = square, scale: float = scale) -> float:
                return math.sqrt(max(max(square, abs(theta)) - theta * theta, 0.0)) * scale
            bound = _solve(mean, (1.0 + mean) if sign < 0 else (1.0 - mean), radius, sign)
        else:
            nonzero = _wilson(plus + minus + unknown, n)
            bound = mean + sign * math.sqrt(max(nonzero - mean * mean, 0.0)) * scale
        if sign < 0:
            lo = max(bound, -1.0)
        else:
            hi = min(bound, 1.0)
    return Bounds(-math.inf if low is None else lo, estimate, math.inf if high is None else hi, float(n))


def stratified(blocks: Blocks, k: float, low: Side | None, high: Side | None) -> Bounds:
    """Bounds on candidate rate - k × baseline rate from per-block counts of both arms.

    Each block where both arms were observed adds h (c_hits / c_n - k b_hits / b_n), h = b_n c_n / (b_n + c_n),
    whose mean is h × (the difference) given the counts: a martingale whatever the arms' traffic shares, and a drift
    both arms share cancels within the block. Its variance is h^2 (c_var / c_n + k^2 b_var / b_n). A null variance
    reads the rates at the point nearest the estimate where the difference equals the bound (each arm moved in
    proportion to its share of the variance), never below the plug-in one; a plug-in side reads them at the
    estimate, Wilson-adjusted where an error towards that side would hide variance.
    """
    b_n, c_n = blocks.baseline_n.astype(np.float64), blocks.candidate_n.astype(np.float64)
    both = (b_n > 0) & (c_n > 0)
    if not both.any():
        return UNBOUNDED
    b_n, c_n = b_n[both], c_n[both]
    b_hits, c_hits = blocks.baseline_hits[both].astype(np.float64), blocks.candidate_hits[both].astype(np.float64)
    h = b_n * c_n / (b_n + c_n)
    pseudo = float(h.sum())
    estimate = float((h * (c_hits / c_n - k * b_hits / b_n)).sum()) / pseudo
    weight_c, weight_b = float((h * h / c_n).sum()), float((h * h / b_n).sum())
    b_total, c_total = float(b_n.sum()), float(c_n.sum())
    b_rate, c_rate = float(b_hits.sum()) / b_total, float(c_hits.sum()) / c_total
    b_w, c_w = _wilson(b_rate * b_total, b_total), _wilson(c_rate * c_total, c_total)
    wilson_b, wilson_c = k * k * weight_b * b_w * (1.0 - b_w), weight_c * c_w * (1.0 - c_w)
    plain_b, plain_c = k * k * weight_b * b_rate * (1.0 - b_rate), weight_c * c_rate * (1.0 - c_rate)
    share_c = wilson_c / (wilson_c + wilson_b)

    def plug_in(sign: float) -> float:
        """A plug-in side fears the estimate being off towards it: the candidate's rate on that side (sign) or the
        baseline's on the other. An arm whose rate would then be further from 1/2 would also look less variable
        (Wald's flaw, worst with rare events): that arm's rate is read at its Wilson bound instead."""
        c_risky = (c_rate > 0.5) == (sign < 0)
        b_risky = (b_rate > 0.5) == (sign > 0)
        return (wilson_c if c_risky else plain_c) + (wilson_b if b_risky else plain_b)

    reach_low, reach_high = estimate + k, 1.0 - estimate  # the difference lies in [-k, 1]
    lo, hi = -math.inf, math.inf
    for side, sign in ((low, -1.0), (high, 1.0)):
        if side is None:
            continue
        scale = float(mixture_boundary(pseudo, side.alpha, side.n_opt)) / pseudo / math.sqrt(pseudo)
        if side.null_variance:
            def radius(theta: float, scale: float = scale, floor: float = plug_in(sign)) -> float:
                gap = estimate - theta  # move the arms so that their difference is theta
                c = min(max(c_rate - share_c * gap, 0.0), 1.0)
                b = min(max(b_rate + (1.0 - share_c) * gap / k, 0.0), 1.0)
                variance = weight_c * c * (1.0 - c) + k * k * weight_b * b * (1.0 - b)
                return math.sqrt(max(variance, floor)) * scale
            bound = _solve(estimate, reach_low if sign < 0 else reach_high, radius, sign)
        else:
            bound = estimate + sign * math.sqrt(plug_in(sign)) * scale
        if sign < 0:
            lo = max(bound, -k)
        else:
            hi = min(bound, 1.0)
    return Bounds(lo, estimate, hi, pseudo)
