"""Simulated rollouts for bench/decisions.py: per-request draws of both arms, and the Observations of any look.

Both arms get the same number of requests (the candidate-limited case: below 50 % the baseline has more), one per
second per arm, so the default steps' 60 s never bind before their 200 samples do. Labels come back `delay`
requests late. Shadow scenarios pair every request (both arms answer it) for the whole run: a candidate leaves the
shadow step only once every criterion passed, and a passed criterion stays passed, so later traffic decides nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from controller.observations import Agreement, ArmObservations, Blocks, Observations, PairedCounts

READING_EVERY = 50  # one memory gauge reading per this many requests per arm
BASE_LATENCY_MS = 20.0
BASE_MEMORY_BYTES = 400e6
LOOK_EVERY = (50, 100, 150, 200, 250)  # requests per arm between two looks, drawn per run
CLASSES = 10  # two wrong answers of a 10-class model differ 8 times in 9


@dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    truth: str  # "good": promote; "bad": roll back; "boundary": never promote; "aa": intervals only
    accuracy: float = 0.97  # the baseline's
    drop: float = 0.005  # baseline - candidate accuracy (0.02 = 2 points)
    pairing: str = "split"  # split | shadow (realistic correlation) | independent (shadow, correctness independent)
    disagree: tuple[float, float] = (0.0, 0.0)  # shadow: share of requests the arms answer differently, per run
    delay: int = 1000  # requests between an answer and its label
    latency_ratio: float = 0.35
    memory_ratio: float = 0.30
    base_errors: float = 0.01
    cand_errors: float = 0.01
    horizon: int = 20_000  # requests per arm before a run counts as undecided
    extend_to: int = 0  # runs still undecided go on to here, to find the requests a target share needs
    oracle: bool = True  # also run the known-variance oracle on these runs


@dataclass
class Truth:
    """What a run's draws come from: the oracle's variances are computed from it."""

    base_acc: float
    cand_acc: float
    # P(only the baseline right), P(only the candidate right), P(both wrong, answered differently)
    paired: tuple[float, float, float] = (0.0, 0.0, 0.0)
    base_errors: float = 0.0
    cand_errors: float = 0.0


@dataclass
class Run:
    """One simulated rollout: prefix counts of everything up to `size` requests per arm."""

    truth: Truth
    look_every: int
    delay: int
    size: int
    shadow: bool
    latency: dict[str, np.ndarray]  # successful requests' latency, arrival order
    memory: dict[str, np.ndarray]
    ok: dict[str, np.ndarray]  # successes among the first n requests (index n)
    correct: dict[str, np.ndarray]  # correct successful answers among the first n requests
    kinds: np.ndarray = field(default_factory=lambda: np.zeros((0, 6), dtype=np.int64))  # pair kinds, prefix counts
    boundaries: list[int] = field(default_factory=lambda: [0])  # requests per arm at each look so far
    cached: Observations | None = None

    def observations(self, n: int, carried: dict[str, tuple[float, float]] | None = None) -> Observations:
        """The look at n requests per arm (built once per look, whichever judge asks first); the looks before it
        must have been taken in order (they are the blocks)."""
        if self.cached is None or self.cached.looks != len(self.boundaries) - 1 or self.boundaries[-1] != n:
            if self.boundaries[-1] != n:
                self.boundaries.append(n)
            self.cached = self._observations(n)
        return replace(self.cached, carried=carried or {})

    def _observations(self, n: int) -> Observations:
        edges = np.asarray(self.boundaries)
        labelled_upto = max(n - self.delay, 0)
        label_edges = np.minimum(np.maximum(edges - self.delay, 0), labelled_upto)
        arms = {}
        for arm in ("baseline", "candidate"):
            ok, correct = int(self.ok[arm][n]), self.correct[arm]
            arms[arm] = ArmObservations(
                latency_ms=self.latency[arm][:ok], requests=n, errors=n - ok,
                memory_bytes=self.memory[arm][: n // READING_EVERY], labelled=int(self.ok[arm][labelled_upto]),
                correct=int(correct[labelled_upto]))
        labels = Blocks(*(np.diff(a[label_edges]) for a in (self.ok["baseline"], self.correct["baseline"],
                                                             self.ok["candidate"], self.correct["candidate"])))
        requests = Blocks(np.diff(edges), np.diff(edges - self.ok["baseline"][edges]), np.diff(edges),
                          np.diff(edges - self.ok["candidate"][edges]))
        paired, agreement = PairedCounts(), Agreement()
        if self.shadow:
            k = self.kinds  # columns: agree right, agree wrong, baseline only, candidate only, neither-differ, pair
            at = k[labelled_upto]
            paired = PairedCounts(both_correct=int(at[0]), baseline_only=int(at[2]), candidate_only=int(at[3]),
                                  neither=int(at[1] + at[4]))
            settled = np.minimum(edges, labelled_upto)  # requests of each block whose label came back
            labelled = k[settled]
            agreement = Agreement(
                pairs=np.diff(k[edges, 5]), disagree=np.diff(k[edges, 2] + k[edges, 3] + k[edges, 4]),
                baseline_only=np.diff(labelled[:, 2]), candidate_only=np.diff(labelled[:, 3]),
                neither=np.diff(labelled[:, 4]))
        return Observations(baseline=arms["baseline"], candidate=arms["candidate"], paired=paired,
                            looks=len(self.boundaries) - 1, agreement=agreement, labels=labels, requests=requests)


def _latencies(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    # Lognormal body plus 0.5 % stalls 5-20× slower (GC pauses, noisy neighbours): heavy right tail.
    values = rng.lognormal(math.log(BASE_LATENCY_MS * scale), 0.35, n)
    stalls = rng.random(n) < 0.005
    values[stalls] *= rng.uniform(5.0, 20.0, int(stalls.sum()))
    return values


def _memory(rng: np.random.Generator, n: int, level: float) -> np.ndarray:
    values = level * (1.0 + 0.01 * rng.standard_normal(n))
    spikes = rng.random(n) < 0.03  # a reading taken mid-allocation
    values[spikes] *= 1.3
    return values


def _pair_kinds(s: Scenario, rng: np.random.Generator) -> tuple[float, float, float]:
    """P(baseline only right), P(candidate only right), P(both wrong, answered differently)."""
    base, cand = s.accuracy, s.accuracy - s.drop
    if s.pairing == "independent":
        return base * (1 - cand), cand * (1 - base), (1 - base) * (1 - cand) * (CLASSES - 2) / (CLASSES - 1)
    q = rng.uniform(*s.disagree) if s.disagree[1] > s.disagree[0] else s.disagree[0]
    if q < s.drop:
        raise ValueError(f"{s.key}: a {s.drop:.1%} drop needs at least {s.drop:.1%} disagreement, got {q:.1%}")
    cand_only = max(0.0, (0.9 * q - s.drop) / 2.0)
    base_only = cand_only + s.drop
    return base_only, cand_only, q - base_only - cand_only


def simulate(s: Scenario, rng: np.random.Generator) -> Run:
    n = max(s.horizon, s.extend_to)
    errors = {"baseline": rng.random(n) < s.base_errors, "candidate": rng.random(n) < s.cand_errors}
    ok = {arm: ~err for arm, err in errors.items()}
    truth = Truth(s.accuracy, s.accuracy - s.drop, base_errors=s.base_errors, cand_errors=s.cand_errors)
    kinds = np.zeros((0, 6), dtype=np.int64)
    if s.pairing == "split":
        right = {"baseline": rng.random(n) < truth.base_acc, "candidate": rng.random(n) < truth.cand_acc}
    else:
        base_only, cand_only, differ = _pair_kinds(s, rng)
        truth.paired = (base_only, cand_only, differ)
        agree_right = truth.base_acc - base_only
        kind = rng.choice(5, size=n, p=[agree_right, 1 - agree_right - base_only - cand_only - differ, base_only,
                                         cand_only, differ])
        right = {"baseline": (kind == 0) | (kind == 2), "candidate": (kind == 0) | (kind == 3)}
        both = ok["baseline"] & ok["candidate"]  # a pair needs both answers
        columns = np.zeros((n, 6), dtype=np.int64)
        columns[np.arange(n), kind] = both
        columns[:, 5] = both
        kinds = np.concatenate([np.zeros((1, 6), dtype=np.int64), np.cumsum(columns, axis=0)])
    latency = {"baseline": _latencies(rng, n, 1.0), "candidate": _latencies(rng, n, s.latency_ratio)}
    level = {"baseline": BASE_MEMORY_BYTES, "candidate": BASE_MEMORY_BYTES * s.memory_ratio}
    return Run(
        truth=truth, look_every=int(rng.choice(LOOK_EVERY)), delay=s.delay, size=n, shadow=s.pairing != "split",
        latency={arm: latency[arm][ok[arm]] for arm in ok},
        memory={arm: _memory(rng, n // READING_EVERY, level[arm]) for arm in ok},
        ok={arm: np.concatenate([[0], np.cumsum(ok[arm])]) for arm in ok},
        correct={arm: np.concatenate([[0], np.cumsum(right[arm] & ok[arm])]) for arm in ok},
        kinds=kinds,
    )
