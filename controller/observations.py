"""What the statistics look at: per-arm observations of one rollout, rebuilt from sample windows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class ArmObservations:
    """Everything recorded for one arm (baseline or candidate) of a rollout so far."""

    latency_ms: np.ndarray  # float64, runner latency of each successful non-shadow-or-shadow request, arrival order
    requests: int  # requests this arm answered or failed (includes shadow calls for the candidate)
    errors: int  # of which failed (status error/timeout)
    memory_bytes: np.ndarray  # float64, exact runner memory readings (model cost), in time order
    labelled: int  # predictions of this arm that got a label
    correct: int  # of which correct
    offline_memory_bytes: int | None = None  # the optimizer's offline figure: shown beside, or gated on
    # runner kind -> memory samples from runners that cannot measure the model's own memory (no figure)
    memory_unmeasured: Mapping[str, int] = field(default_factory=dict)
    cannot_serve: str = ""  # the newest reason a router gave for not serving this arm ("" = never reported)


@dataclass(frozen=True, slots=True)
class PairedCounts:
    """Shadow pairs where both arms answered the same labelled request."""

    both_correct: int = 0
    baseline_only: int = 0  # baseline right, candidate wrong
    candidate_only: int = 0  # candidate right, baseline wrong
    neither: int = 0

    @property
    def n(self) -> int:
        return self.both_correct + self.baseline_only + self.candidate_only + self.neither


_NONE = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Blocks:
    """Both arms' counts per time block, in time order: how many observations and how many hits (correct answers,
    or errors). A difference is estimated within each block and the blocks are summed, so each block's increment
    is a martingale step whatever the arms' shares of traffic, and a drift that both arms share cancels."""

    baseline_n: np.ndarray = field(default_factory=lambda: _NONE)
    baseline_hits: np.ndarray = field(default_factory=lambda: _NONE)
    candidate_n: np.ndarray = field(default_factory=lambda: _NONE)
    candidate_hits: np.ndarray = field(default_factory=lambda: _NONE)

    @classmethod
    def single(cls, baseline_n: int, baseline_hits: int, candidate_n: int, candidate_hits: int) -> Blocks:
        """Everything in one block: for callers that only know totals (both arms observed over the same period)."""
        return cls(*(np.array([v], dtype=np.int64) for v in (baseline_n, baseline_hits, candidate_n, candidate_hits)))


@dataclass(frozen=True, slots=True)
class Agreement:
    """Shadow pairs of predictions (both arms answered the same request), per block of requests in time order:
    how many, how many the two arms answered differently, and for the differing ones whose label came back which
    arm was right. Pairs that agree have the same correctness whatever the label: |accuracy difference| <= the
    share that disagrees, before any label arrives."""

    pairs: np.ndarray = field(default_factory=lambda: _NONE)
    disagree: np.ndarray = field(default_factory=lambda: _NONE)
    baseline_only: np.ndarray = field(default_factory=lambda: _NONE)  # labelled disagreements only the baseline got
    candidate_only: np.ndarray = field(default_factory=lambda: _NONE)  # right, only the candidate got right,
    neither: np.ndarray = field(default_factory=lambda: _NONE)  # or neither got right

    @property
    def n(self) -> int:
        return int(self.pairs.sum())


@dataclass(frozen=True, slots=True)
class Observations:
    """Both arms of one rollout plus their shadow pairs, as of one look.

    `labels` and `requests` are the difference sequences' strata (labelled predictions outside shadow pairs, and
    requests with their errors); `None` means one block of the arms' totals. `carried` holds each confidence
    sequence's running interval from the looks before (name -> (low, high), +-inf where unbounded): the new look
    intersects it, so verdicts never go back and each decision is a pure function of its windows and this state.
    """

    baseline: ArmObservations
    candidate: ArmObservations
    paired: PairedCounts
    looks: int = 1  # times the rollout has been evaluated so far (informational: methods are valid at any look)
    agreement: Agreement = field(default_factory=Agreement)
    labels: Blocks | None = None
    requests: Blocks | None = None
    carried: Mapping[str, tuple[float, float]] = field(default_factory=dict)
