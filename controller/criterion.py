"""What every criterion shares: running intervals (a look's interval ∩ the one carried from the looks before), the
verdict rules against a threshold, and the words and numbers of the messages. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from modelroll.types import CriterionResult, Verdict

Interval = tuple[float, float]  # (low, high), -inf / inf where unbounded
OPEN: Interval = (-math.inf, math.inf)


def combine(before: Interval, look: Interval) -> Interval:
    """The running interval after a look: its interval ∩ the one carried from the looks before.

    When the two exclude each other — a sequence missed (it may, with probability α), or the arms changed under it
    (latency under a step's new load, memory after a runner warmed up) — their hull instead: a verdict then needs
    the looks before and this one to agree, and the next look narrows it again. An empty interval is never carried:
    it would hold every later look undecided for the rest of the rollout.
    """
    if look[0] > look[1]:
        return before
    if before[0] > before[1]:
        return look
    low, high = max(before[0], look[0]), min(before[1], look[1])
    if low <= high:
        return low, high
    return min(before[0], look[0]), max(before[1], look[1])


def running(carried: Mapping[str, Interval], name: str, look: Interval) -> Interval:
    """This look's interval combined with the one carried under `name` (see `combine`)."""
    return combine(carried.get(name, OPEN), look)


def disagrees(carried: Mapping[str, Interval], name: str, look: Interval) -> bool:
    """Whether this look's interval excludes everything the looks before allowed (`combine` then takes the hull)."""
    before = carried.get(name, OPEN)
    return look[0] <= look[1] and before[0] <= before[1] and max(before[0], look[0]) > min(before[1], look[1])


def _json(value: float) -> float | None:
    return value if math.isfinite(value) else None


def entry(carried: Mapping[str, Interval], name: str, look: Interval | None) -> dict[str, tuple[float | None,
                                                                                                   float | None]]:
    """One sequence as a result records it: this look's interval (if computed) and the carried one (if any)."""
    out: dict[str, tuple[float | None, float | None]] = {}
    if look is not None:
        out["look"] = (_json(look[0]), _json(look[1]))
    if name in carried:
        out["carried"] = (_json(carried[name][0]), _json(carried[name][1]))
    return out


def carried_through(carried: Mapping[str, Interval], names: Sequence[str]
                    ) -> dict[str, dict[str, tuple[float | None, float | None]]]:
    """The sequences of a criterion that computed nothing at this look: what was carried goes on unchanged."""
    return {name: entry(carried, name, None) for name in names if name in carried}


def carry(results: Sequence[CriterionResult | Mapping[str, Any]]) -> dict[str, Interval]:
    """The running intervals a look leaves for the next one, from its results (objects or their recorded dicts)."""
    out: dict[str, Interval] = {}
    for result in results:
        sequences = result.sequences if isinstance(result, CriterionResult) else result.get("sequences") or {}
        for name, parts in sequences.items():
            before, look = (_interval(parts.get(part)) for part in ("carried", "look"))
            out[name] = combine(before, look)
    return out


def _interval(recorded: Any) -> Interval:
    """A recorded (low, high) pair, None standing for an unbounded end; a missing part is the open interval."""
    if recorded is None:
        return OPEN
    a, b = recorded
    return (-math.inf if a is None else float(a)), (math.inf if b is None else float(b))


def upper_limit_verdict(low: float, high: float, limit: float) -> Verdict:
    """For a figure that must stay <= limit (ratios, error difference): pass when its upper end is within it."""
    if low > high:
        return Verdict.UNDECIDED
    if high <= limit:
        return Verdict.PASS
    if low > limit:
        return Verdict.FAIL
    return Verdict.UNDECIDED


def lower_limit_verdict(low: float, high: float, limit: float) -> Verdict:
    """For a figure that must stay >= limit (accuracy difference): pass when its lower end clears it."""
    if low > high:
        return Verdict.UNDECIDED
    if low >= limit:
        return Verdict.PASS
    if high < limit:
        return Verdict.FAIL
    return Verdict.UNDECIDED


def word(verdict: Verdict) -> str:
    return {Verdict.PASS: "passes", Verdict.FAIL: "fails", Verdict.UNDECIDED: "not decided yet"}[verdict]


def num(value: float | None, fmt: str = ".2f") -> str:
    if value is None or math.isnan(value):
        return "?"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return format(value, fmt)


def points(value: float) -> str:
    """A difference of rates in points, signed: +0.4, −2.0 (−∞ / +∞ when unbounded)."""
    if math.isinf(value):
        return "−∞" if value < 0 else "+∞"
    return f"{value * 100:+.1f}".replace("-", "−")


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def drift_note(name: str, look: Interval, carried: Interval, fmt: Any = points) -> str:
    """Said when a look excludes what the looks before allowed, so that the reader knows why the interval widened."""
    return (f"; {name}: this look's [{fmt(look[0])}, {fmt(look[1])}] lies outside the looks before "
            f"[{fmt(carried[0])}, {fmt(carried[1])}] — the arms changed or a sequence missed, so a verdict needs both")


def not_enough(name: str, threshold: float, method: str, have: tuple[int, int], need: int, what: str = "samples",
               carried: Mapping[str, Interval] | None = None, names: Sequence[str] = ()) -> CriterionResult:
    return CriterionResult(
        criterion=name, verdict=Verdict.UNDECIDED, estimate=None, ci_low=None, ci_high=None,
        threshold=threshold, baseline_value=None, candidate_value=None,
        baseline_n=have[0], candidate_n=have[1], method=method,
        message=f"not enough {what} yet: {min(have)} of {need} per arm",
        sequences=carried_through(carried or {}, names),
    )
