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


@dataclass(frozen=True, slots=True)
class Observations:
    """Both arms of one rollout plus their shadow pairs, as of one look."""

    baseline: ArmObservations
    candidate: ArmObservations
    paired: PairedCounts
    looks: int = 1  # times the rollout has been evaluated so far (informational: methods are valid at any look)
