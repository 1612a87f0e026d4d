"""Anytime-valid confidence sequences (CS): a stitched boundary and quantile bounds (exact), and the one-sided
normal-mixture boundary the asymptotic difference sequences use (controller/difference.py).

Each bound holds at every sample size at once with probability >= 1 - alpha, so it may be looked at
after every batch, forever. Papers are cited at each function; docs/statistics.md explains the choices.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import overload

import numpy as np
from scipy.special import log_ndtr, zeta

# Polynomial stitching parameters (Howard, Ramdas, McAuliffe, Sekhon 2021, Theorem 1 / eq. (10)):
# eta spaces the epochs geometrically, s spreads alpha over them as a zeta(s) series.
STITCH_S = 1.4
STITCH_ETA = 2.0
_K1 = (STITCH_ETA**0.25 + STITCH_ETA**-0.25) / math.sqrt(2.0)
_K2 = (math.sqrt(STITCH_ETA) + 1.0) / 2.0
_LOG_ZETA = math.log(float(zeta(STITCH_S)) / math.log(STITCH_ETA) ** STITCH_S)


def stitched_boundary(v: float, alpha: float, v_min: float, c: float) -> float:
    """Sub-gamma uniform boundary: P(exists t: S_t >= f(V_t)) <= alpha.

    Howard, Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
    sequences", Annals of Statistics 49(2), 2021, Theorem 1 (polynomial stitching). `v` is the
    intrinsic time (variance process), `c` the sub-gamma scale; tightest for v near `v_min`.
    """
    v = max(v, v_min)
    ell = STITCH_S * math.log(math.log(STITCH_ETA * v / v_min)) + _LOG_ZETA + math.log(1.0 / alpha)
    term = _K2 * c * ell
    return math.sqrt(_K1 * _K1 * v * ell + term * term) + term


@dataclass(frozen=True, slots=True)
class QuantileRanks:
    """1-based ranks of the order statistics that bound the p-quantile; 0 / n + 1 mean unbounded."""

    low: int
    estimate: int
    high: int


def quantile_ranks(n: int, p: float, alpha: float, n_min: float, alpha_high: float | None = None) -> QuantileRanks:
    """Ranks bracketing the p-quantile of i.i.d. draws, valid for all n at once: `alpha` on the low side and
    `alpha_high` (default `alpha`) on the high side.

    Howard & Ramdas, "Sequential estimation of quantiles with applications to A/B-testing and
    best-arm identification", Bernoulli 28(3), 2022, Theorem 1: the count of draws below the true
    quantile is a Bernoulli(p) sum, so a uniform boundary on it turns into order-statistic ranks.
    Counts below q have increments <= 1 - p (sub-gamma scale (1 - p)/3, Bennett), counts above
    have increments <= p (scale p/3); both have variance p(1 - p) per draw.
    """
    variance = p * (1.0 - p)
    v, v_min = n * variance, max(n_min, 1.0) * variance
    above = stitched_boundary(v, alpha if alpha_high is None else alpha_high, v_min, (1.0 - p) / 3.0)
    below = stitched_boundary(v, alpha, v_min, p / 3.0)
    high = math.floor(n * p + above) + 1
    low = math.ceil(n * p - below)
    estimate = min(max(math.ceil(n * p), 1), n)
    return QuantileRanks(low=max(low, 0), estimate=estimate, high=min(high, n + 1))


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with its confidence bounds; -inf / inf where the data do not bound it yet."""

    low: float
    estimate: float
    high: float


def quantile_intervals(values: np.ndarray, ps: tuple[float, ...], alpha: float, n_min: float,
                       alpha_high: float | None = None) -> list[Interval]:
    """Anytime-valid intervals for several quantiles of one sample, one partition pass: `alpha` on each low end,
    `alpha_high` (default `alpha`) on each high end."""
    n = int(values.shape[0])
    if n == 0:
        return [Interval(-math.inf, math.nan, math.inf) for _ in ps]
    all_ranks = [quantile_ranks(n, p, alpha, n_min, alpha_high) for p in ps]
    wanted = sorted({r - 1 for ranks in all_ranks for r in (ranks.low, ranks.estimate, ranks.high) if 1 <= r <= n})
    part = np.partition(values, wanted)

    def at(rank: int, outside: float) -> float:
        return float(part[rank - 1]) if 1 <= rank <= n else outside

    return [
        Interval(at(r.low, -math.inf), at(r.estimate, math.nan), at(r.high, math.inf)) for r in all_ranks
    ]


# --- the one-sided normal mixture -------------------------------------------------------------------------------

_LOG2 = math.log(2.0)
_TUNING_GRID = np.geomspace(0.3, 300.0, 400)  # tau^2 * n_opt values tried when tuning a boundary


@overload
def mixture_boundary(n: float, alpha: float, n_opt: float) -> float: ...
@overload
def mixture_boundary(n: np.ndarray, alpha: float, n_opt: float) -> np.ndarray: ...
def mixture_boundary(n: np.ndarray | float, alpha: float, n_opt: float) -> np.ndarray | float:
    """One-sided boundary b(n) on a sum of unit-variance increments: P(exists n: S_n >= b(n)) <= alpha.

    Robbins' normal mixture over a half-normal prior on lambda >= 0 (Howard, Ramdas, McAuliffe, Sekhon 2021, §3;
    the one-sided form of the boundary Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas, "Time-uniform central limit
    theory and asymptotic confidence sequences", Annals of Statistics 52(6), 2024, plug into the CLT): the mixture
    of exp(lambda S - lambda^2 n / 2) is M = 2 (1 + tau2 n)^(-1/2) exp(tau2 S^2 / (2 (1 + tau2 n))) Phi(sqrt(tau2) S /
    sqrt(1 + tau2 n)), a nonnegative martingale for Gaussian increments, so by Ville S_n >= b(n), where M = 1/alpha,
    happens with probability <= alpha at any n, ever. tau2 is chosen so that b(n) / n is smallest at `n_opt`:
    the sequence is tightest where decisions are taken, and valid everywhere.
    """
    if isinstance(n, (int, float)):
        return _mixture_scalar(float(n), alpha, n_opt)
    tau2 = _tau2(alpha, n_opt)
    a = 1.0 + tau2 * np.asarray(n, dtype=np.float64)
    # M = 1/alpha  <=>  u^2 / 2 + log Phi(u) = log(1/alpha) - log 2 + log(a) / 2, with u = sqrt(tau2) S / sqrt(a)
    u = _solve_mixture(math.log(1.0 / alpha) - _LOG2 + 0.5 * np.log(a))
    return u * np.sqrt(a / tau2)


@functools.lru_cache(maxsize=8192)
def _mixture_scalar(n: float, alpha: float, n_opt: float) -> float:
    """mixture_boundary for one n, in plain floats (a look asks for a few; the bench for many, repeatedly)."""
    tau2 = _tau2(alpha, n_opt)
    a = 1.0 + tau2 * n
    target = math.log(1.0 / alpha) - _LOG2 + 0.5 * math.log(a)
    u = math.sqrt(2.0 * target)
    for _ in range(8):
        phi = 0.5 * math.erfc(-u / math.sqrt(2.0))
        mills = math.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi) / phi
        step = (0.5 * u * u + math.log(phi) - target) / (u + mills)
        u -= step
        if abs(step) < 1e-12:
            break
    return u * math.sqrt(a / tau2)


def _solve_mixture(target: np.ndarray) -> np.ndarray:
    """u with u^2 / 2 + log Phi(u) = target (> 0): Newton from sqrt(2 target), where the left side is convex."""
    u = np.sqrt(2.0 * target)
    for _ in range(8):
        log_phi = log_ndtr(u)
        mills = np.exp(-0.5 * u * u - 0.5 * math.log(2.0 * math.pi) - log_phi)  # phi(u) / Phi(u)
        u = u - (0.5 * u * u + log_phi - target) / (u + mills)
    return u


@functools.lru_cache(maxsize=256)
def _tau2(alpha: float, n_opt: float) -> float:
    """The mixture's precision that minimises the boundary at n_opt (a fixed number: chosen before any data)."""
    tau2 = _TUNING_GRID / n_opt
    a = 1.0 + tau2 * n_opt
    width = _solve_mixture(math.log(1.0 / alpha) - _LOG2 + 0.5 * np.log(a)) * np.sqrt(a / tau2)
    return float(tau2[int(np.argmin(width))])
