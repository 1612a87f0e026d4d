"""Anytime-valid confidence sequences (CS): a stitched boundary, quantile bounds and betting bounds for bounded means.

Each bound holds at every sample size at once with probability >= 1 - alpha, so it may be looked at
after every batch, forever. Papers are cited at each function; docs/statistics.md explains the choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import zeta

# Polynomial stitching parameters (Howard, Ramdas, McAuliffe, Sekhon 2021, Theorem 1 / eq. (10)):
# eta spaces the epochs geometrically, s spreads alpha over them as a zeta(s) series.
STITCH_S = 1.4
STITCH_ETA = 2.0
_K1 = (STITCH_ETA**0.25 + STITCH_ETA**-0.25) / math.sqrt(2.0)
_K2 = (math.sqrt(STITCH_ETA) + 1.0) / 2.0
_LOG_ZETA = math.log(float(zeta(STITCH_S)) / math.log(STITCH_ETA) ** STITCH_S)

# Betting fractions for the diversified-Kelly mixture: a geometric grid, so that every plausible Kelly bet
# is within a factor 1.42 of a grid point (<= 4 % of the optimal growth lost) for a fixed log(16) cost.
BET_FRACTIONS = np.geomspace(0.005, 0.95, 16)
_LOG_BET_COUNT = math.log(len(BET_FRACTIONS))
_GRID_POINTS = 16  # levels tried per refinement round
_GRID_ROUNDS = 5  # 16**5: bounds within 1e-6 of the starting bracket, always on the conservative side


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


def quantile_ranks(n: int, p: float, alpha: float, n_min: float) -> QuantileRanks:
    """Ranks bracketing the p-quantile of i.i.d. draws, valid for all n at once, alpha per side.

    Howard & Ramdas, "Sequential estimation of quantiles with applications to A/B-testing and
    best-arm identification", Bernoulli 28(3), 2022, Theorem 1: the count of draws below the true
    quantile is a Bernoulli(p) sum, so a uniform boundary on it turns into order-statistic ranks.
    Counts below q have increments <= 1 - p (sub-gamma scale (1 - p)/3, Bennett), counts above
    have increments <= p (scale p/3); both have variance p(1 - p) per draw.
    """
    variance = p * (1.0 - p)
    v, v_min = n * variance, max(n_min, 1.0) * variance
    above = stitched_boundary(v, alpha, v_min, (1.0 - p) / 3.0)
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


def quantile_intervals(values: np.ndarray, ps: tuple[float, ...], alpha: float, n_min: float) -> list[Interval]:
    """Anytime-valid intervals for several quantiles of one sample (alpha per side each), one partition pass."""
    n = int(values.shape[0])
    if n == 0:
        return [Interval(-math.inf, math.nan, math.inf) for _ in ps]
    all_ranks = [quantile_ranks(n, p, alpha, n_min) for p in ps]
    wanted = sorted({r - 1 for ranks in all_ranks for r in (ranks.low, ranks.estimate, ranks.high) if 1 <= r <= n})
    part = np.partition(values, wanted)

    def at(rank: int, outside: float) -> float:
        return float(part[rank - 1]) if 1 <= rank <= n else outside

    return [
        Interval(at(r.low, -math.inf), at(r.estimate, math.nan), at(r.high, math.inf)) for r in all_ranks
    ]


def _log_wealth_up(levels: np.ndarray, counts: np.ndarray, means: np.ndarray) -> np.ndarray:
    """log of the mixture capital of bets that the mean exceeds `means` (P, G), per problem row.

    A bet of fraction c at level m multiplies capital by (1 - c) + c*y/m per observation y in [0, 1]
    (Kelly bet lambda = c/m on y - m); the capital is averaged uniformly over BET_FRACTIONS.
    """
    ratio = levels[:, None, :] / means[:, :, None]  # (P, G, J)
    factors = np.log1p(BET_FRACTIONS * (ratio[..., None] - 1.0))  # (P, G, J, K)
    per_bet = (counts[:, None, :, None] * factors).sum(axis=2)  # (P, G, K)
    top = per_bet.max(axis=2, keepdims=True)
    return (top[..., 0] + np.log(np.exp(per_bet - top).sum(axis=2))) - _LOG_BET_COUNT  # type: ignore[no-any-return]


def _lower_bounds(levels: np.ndarray, counts: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Lower confidence bound per row: the largest level found rejected (the exact bound lies just above it).

    The capital falls as the level rises, so the rejected levels form an interval [0, bound): refine a bracket.
    """
    totals = counts.sum(axis=1)
    sample_means = (counts * levels).sum(axis=1) / np.maximum(totals, 1.0)
    thresholds = np.log(1.0 / alphas)[:, None]
    low = np.zeros_like(sample_means)  # rejected (or zero)
    decided = (totals > 0) & (sample_means > 0)  # other rows have lower bound 0; search them harmlessly
    high = np.where(decided, sample_means, 1.0)  # the sample mean is never rejected: log(1 + x) <= x
    steps = np.arange(1, _GRID_POINTS)[None, :] / _GRID_POINTS
    for _ in range(_GRID_ROUNDS):
        grid = low[:, None] + (high - low)[:, None] * steps  # (P, G - 1), increasing
        rejected = _log_wealth_up(levels, counts, grid) >= thresholds
        last = rejected.sum(axis=1)  # rejected levels form a prefix of the grid
        rows = np.arange(grid.shape[0])
        low = np.where(last > 0, grid[rows, np.maximum(last - 1, 0)], low)
        high = np.where(last < grid.shape[1], grid[rows, np.minimum(last, grid.shape[1] - 1)], high)
    return np.where(decided, low, 0.0)  # the largest level still rejected: conservative


def bounded_mean_bounds(levels: np.ndarray, counts: np.ndarray, alphas: np.ndarray | float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Anytime-valid lower and upper bounds (alpha per side) on the mean of [0, 1]-valued draws, from counts.

    Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B 86(1),
    2024: a level is excluded once a bettor's capital against it reaches 1/alpha (Ville's inequality).
    We average constant bets over a fixed geometric grid (their "diversified Kelly" idea), which depends on the data
    only through the counts of each value, so the answer does not depend on arrival order.
    `levels` (J,) are the values a draw can take, `counts` (P, J) how often each occurred per problem,
    `alphas` the error per side for each problem (or one for all).
    """
    levels = np.asarray(levels, dtype=np.float64)
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    rows = counts.shape[0]
    alpha = np.broadcast_to(np.asarray(alphas, dtype=np.float64), (rows,))
    # Upper bounds are lower bounds of the reflected draws 1 - y: solve both sides in one pass.
    both_levels = np.concatenate([np.broadcast_to(levels, (rows, levels.size)),
                                  np.broadcast_to(1.0 - levels, (rows, levels.size))])
    lows = _lower_bounds(both_levels, np.concatenate([counts, counts]), np.concatenate([alpha, alpha]))
    lower, upper = lows[:rows], 1.0 - lows[rows:]
    empty = counts.sum(axis=1) == 0
    return np.where(empty, 0.0, lower), np.where(empty, 1.0, upper)
