"""The memory criterion where no live statistic may decide: runners that cannot measure a variant's own memory
(undecided, "not measurable here", with what to do), and rollouts that gate memory on the optimizer's figures.

Pure functions of the observations, called by `controller.stats`; a verdict is never drawn from an estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.observations import Observations
from modelroll.types import Criteria, CriterionResult, Verdict

# Why a runner kind cannot measure a variant's own memory ("": a router older than the distinction).
_WHY = {
    "inline": "the inline runner shares the router's process with every variant, so only an estimate exists",
    "http": "the http runner's model runs on a remote server, whose memory the router cannot read",
    "": "a router older than this controller sent readings that may be estimates",
}
_WHAT_TO_DO = ("run the routers with MODELROLL_ROUTER_RUNNER=subprocess (each variant in its own process, "
               "measured exactly), or create the rollout with memory gated on the optimizer's offline figure "
               "(`modelroll rollout create --memory-gate offline`, criteria.memory_source \"offline\")")
OFFLINE_METHOD = ("offline: the optimizer's model memory of each variant (each measured in a fresh process, at the "
                  "batch size where the candidate saves least); a fixed figure, not a live statistic")


def runner_label(kind: str) -> str:
    return f"{kind} runner" if kind else "router of an older version"


def unmeasured(obs: Observations) -> dict[str, int]:
    """Runner kind -> memory samples of both arms from runners that cannot measure (kinds with none left out)."""
    counts: dict[str, int] = {}
    for arm in (obs.baseline, obs.candidate):
        for kind, count in arm.memory_unmeasured.items():
            counts[kind] = counts.get(kind, 0) + count
    return {kind: count for kind, count in counts.items() if count > 0}


def not_measurable(limit: float, method: str, readings: tuple[int, int], kinds: Sequence[str]) -> CriterionResult:
    """Undecided, naming each runner that cannot measure and what to do: memory holds the rollout."""
    why = "; ".join(_WHY.get(kind, f"the {kind} runner reports no exact memory") for kind in kinds)
    return CriterionResult(
        criterion="memory", verdict=Verdict.UNDECIDED, estimate=None, ci_low=None, ci_high=None, threshold=limit,
        baseline_value=None, candidate_value=None, baseline_n=readings[0], candidate_n=readings[1], method=method,
        message=(f"not measurable here ({', '.join(runner_label(k) for k in kinds)}): {why}; no gate decides on an "
                 f"estimate, so memory holds the rollout: {_WHAT_TO_DO}"),
        source="unmeasurable",
    )


def ignored_note(counts: Mapping[str, int]) -> str:
    """What a live verdict on exact readings left aside (readings of other routers that cannot measure)."""
    return "".join(f" ({count} readings from the {runner_label(kind)} ignored: not measurable there)"
                   for kind, count in sorted(counts.items()))


def offline(criteria: Criteria, obs: Observations) -> CriterionResult:
    """Gated on the optimizer's figures: a fixed ratio, decided at the first look; undecided without both."""
    limit = criteria.memory_ratio_max
    base, cand = obs.baseline.offline_memory_bytes, obs.candidate.offline_memory_bytes
    if base is None or cand is None or base <= 0:
        missing = ("the baseline's offline memory is 0 bytes, so there is no ratio" if base == 0 and cand is not None
                   else "there is no optimizer report with the memory of both variants")
        return CriterionResult(
            criterion="memory", verdict=Verdict.UNDECIDED, estimate=None, ci_low=None, ci_high=None, threshold=limit,
            baseline_value=None, candidate_value=None, baseline_n=0, candidate_n=0, method=OFFLINE_METHOD,
            message=(f"not measurable here (offline): memory is gated on the optimizer's offline figure, and "
                     f"{missing}; optimize the candidate (`modelroll optimize`) so that its report exists, or create "
                     "the rollout with memory gated live (--memory-gate live) on routers with "
                     "MODELROLL_ROUTER_RUNNER=subprocess"),
            source="unmeasurable",
        )
    ratio = cand / base
    verdict = Verdict.PASS if ratio <= limit else Verdict.FAIL
    return CriterionResult(
        criterion="memory", verdict=verdict, estimate=ratio, ci_low=None, ci_high=None, threshold=limit,
        baseline_value=float(base), candidate_value=float(cand), baseline_n=1, candidate_n=1, method=OFFLINE_METHOD,
        message=(f"candidate memory is {ratio:.2f}× baseline offline ({cand / 2**20:.1f} MiB vs {base / 2**20:.1f} "
                 f"MiB, the optimizer's figures), needs ≤ {limit:.2f}×: "
                 f"{'passes' if verdict is Verdict.PASS else 'fails'}"),
        source="offline",
    )
