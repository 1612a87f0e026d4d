"""Decision quality: modelroll's anytime-valid statistics vs Kayenta-style and Flagger-style judges, same runs.

Every scenario is simulated `--reps` times; all three judges look after every batch of the same data.
Run: .venv/bin/python bench/decisions.py [--reps 1000] [--seed 20240601]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.observations import ArmObservations, Observations, PairedCounts
from controller.stats import evaluate, overall
from modelroll.types import Criteria, Verdict

BATCH = 250  # requests per arm between two looks (shadow: both arms answer every request)
HORIZON = 20_000  # requests per arm before a run counts as undecided
READING_EVERY = 50  # one memory gauge reading per this many requests per arm (2 s at 25 req/s)
BASE_LATENCY_MS = 20.0
BASE_MEMORY_BYTES = 400e6
BASE_ACCURACY = 0.90
BASE_ERROR_RATE = 0.001
FIXED_ALPHA = 0.05  # Kayenta-style: nominal level of each fixed-horizon test, re-run at every look
FLAGGER_ITERATIONS = 10  # Flagger-style: passing intervals needed to promote
FLAGGER_THRESHOLD = 5  # Flagger-style: failed intervals that roll back


@dataclass(frozen=True)
class Scenario:
    name: str
    latency_ratio: float = 0.35
    memory_ratio: float = 0.30
    baseline_only: float = 0.015  # share of requests only the baseline answers correctly
    candidate_only: float = 0.015  # share only the candidate answers correctly
    candidate_error_rate: float = BASE_ERROR_RATE
    shadow: bool = True  # both arms answer every request (labelled shadow pairs); False: split traffic, no pairs
    truth: str = "good"  # what a perfect judge does: "good" promotes, "bad" rolls back, "boundary" never promotes


SCENARIOS = (
    Scenario("clearly good"),
    Scenario("latency at boundary (0.50×)", latency_ratio=0.50, truth="boundary"),
    Scenario("latency slightly slow (0.55×)", latency_ratio=0.55, truth="bad"),
    Scenario("accuracy −3 points (budget 2)", baseline_only=0.04, candidate_only=0.01, truth="bad"),
    Scenario("accuracy at budget (−2 points)", baseline_only=0.035, candidate_only=0.015, truth="boundary"),
    Scenario("accuracy at budget, split traffic", baseline_only=0.035, candidate_only=0.015, shadow=False,
             truth="boundary"),
    Scenario("broken: 20% errors", candidate_error_rate=0.20, truth="bad"),
)


@dataclass
class Run:
    """One simulated rollout: per-request draws for both arms up to the horizon, with prefix counts."""

    latency: dict[str, np.ndarray]  # latency of successful requests, arrival order
    ok_cum: dict[str, np.ndarray]  # successes among the first n requests (index n)
    correct_cum: dict[str, np.ndarray]  # correct labelled answers among the first n requests
    pairs_cum: np.ndarray  # (N + 1, 4): both right, baseline only, candidate only, neither
    memory: dict[str, np.ndarray]

    def observations(self, n: int) -> Observations:
        arms = {}
        for arm in ("baseline", "candidate"):
            ok = int(self.ok_cum[arm][n])
            arms[arm] = ArmObservations(
                latency_ms=self.latency[arm][:ok], requests=n, errors=n - ok,
                memory_bytes=self.memory[arm][: n // READING_EVERY], labelled=ok,
                correct=int(self.correct_cum[arm][n]),
            )
        pairs = PairedCounts(*(int(v) for v in self.pairs_cum[n]))
        return Observations(baseline=arms["baseline"], candidate=arms["candidate"], paired=pairs)


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


def simulate(s: Scenario, rng: np.random.Generator) -> Run:
    n = HORIZON
    errors = {"baseline": rng.random(n) < BASE_ERROR_RATE, "candidate": rng.random(n) < s.candidate_error_rate}
    ok = {arm: ~err for arm, err in errors.items()}
    both_right = BASE_ACCURACY - s.baseline_only
    kind = rng.choice(4, size=n, p=[both_right, s.baseline_only, s.candidate_only,
                                     1.0 - both_right - s.baseline_only - s.candidate_only])
    pairs = np.zeros((n + 1, 4), dtype=np.int64)
    if s.shadow:
        paired_ok = ok["baseline"] & ok["candidate"]
        pairs[1:] = np.cumsum(np.eye(4, dtype=np.int64)[kind] * paired_ok[:, None], axis=0)
        right = {"baseline": (kind == 0) | (kind == 1), "candidate": (kind == 0) | (kind == 2)}
    else:  # different requests: each arm right or wrong independently, at the same accuracies
        right = {"baseline": rng.random(n) < BASE_ACCURACY,
                 "candidate": rng.random(n) < BASE_ACCURACY - s.baseline_only + s.candidate_only}
    latency = {"baseline": _latencies(rng, n, 1.0), "candidate": _latencies(rng, n, s.latency_ratio)}
    memory_level = {"baseline": BASE_MEMORY_BYTES, "candidate": BASE_MEMORY_BYTES * s.memory_ratio}
    return Run(
        latency={arm: latency[arm][ok[arm]] for arm in ok},
        ok_cum={arm: np.concatenate([[0], np.cumsum(ok[arm])]) for arm in ok},
        correct_cum={arm: np.concatenate([[0], np.cumsum(right[arm] & ok[arm])]) for arm in ok},
        pairs_cum=pairs,
        memory={arm: _memory(rng, n // READING_EVERY, memory_level[arm]) for arm in ok},
    )


def modelroll_judge(criteria: Criteria) -> Callable[[Observations, Observations | None], Verdict]:
    def judge(obs: Observations, _previous: Observations | None) -> Verdict:
        return overall(evaluate(criteria, obs))
    return judge


def _mann_whitney_z(candidate: np.ndarray, baseline: np.ndarray) -> float:
    """Normal-approximation Mann-Whitney z; > 0 when the candidate tends to be larger."""
    nc, nb = candidate.size, baseline.size
    u = float(np.searchsorted(np.sort(baseline), np.sort(candidate)).sum())  # sorted needles: cache-friendly
    return (u - nc * nb / 2.0) / math.sqrt(nc * nb * (nc + nb + 1) / 12.0)


def _proportion_z(diff: float, p_b: float, n_b: int, p_c: float, n_c: int) -> float:
    se = math.sqrt(p_b * (1 - p_b) / n_b + p_c * (1 - p_c) / n_c)
    return diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0


def _fixed_verdicts(z_bad: list[float], crit: float) -> Verdict:
    """Each z is > 0 when that metric is on the wrong side of its allowed level."""
    if any(z > crit for z in z_bad):
        return Verdict.FAIL
    if all(z < -crit for z in z_bad):
        return Verdict.PASS
    return Verdict.UNDECIDED


def kayenta_judge(criteria: Criteria) -> Callable[[Observations, Observations | None], Verdict]:
    """Fixed-horizon tests at nominal alpha on all data so far, re-run at every look (no correction)."""
    crit = 1.959963984540054  # two-sided 5 %

    def judge(obs: Observations, _previous: Observations | None) -> Verdict:
        b, c = obs.baseline, obs.candidate
        if min(b.requests, c.requests) < criteria.min_samples:
            return Verdict.UNDECIDED
        z_latency = _mann_whitney_z(c.latency_ms / criteria.latency_ratio_max, b.latency_ms)
        z_memory = _mann_whitney_z(c.memory_bytes / criteria.memory_ratio_max, b.memory_bytes)
        pb, pc = b.correct / max(b.labelled, 1), c.correct / max(c.labelled, 1)
        z_accuracy = -_proportion_z(pc - pb + criteria.accuracy_drop_max, pb, b.labelled, pc, c.labelled)
        eb, ec = b.errors / b.requests, c.errors / c.requests
        z_errors = _proportion_z(ec - eb - criteria.error_rate_tolerance, eb, b.requests, ec, c.requests)
        return _fixed_verdicts([z_latency, z_memory, z_accuracy, z_errors], crit)
    return judge


@dataclass
class FlaggerState:
    passed: int = 0
    failed: int = 0


def flagger_judge(criteria: Criteria) -> Callable[[Observations, Observations | None], Verdict]:
    """Thresholds on the last interval's figures; promote after N passing intervals, roll back after M failing."""
    state = FlaggerState()

    def judge(obs: Observations, previous: Observations | None) -> Verdict:
        if previous is None:
            state.passed = state.failed = 0
            return Verdict.UNDECIDED
        window = {}
        for arm in ("baseline", "candidate"):
            now, before = getattr(obs, arm), getattr(previous, arm)
            window[arm] = (now.latency_ms[before.latency_ms.size:], now.memory_bytes[before.memory_bytes.size:],
                           now.requests - before.requests, now.errors - before.errors,
                           now.labelled - before.labelled, now.correct - before.correct)
        (lb, mb, rb, eb, nb, cb), (lc, mc, rc, ec, nc, cc) = window["baseline"], window["candidate"]
        ok = (
            np.quantile(lc, 0.5) / np.quantile(lb, 0.5) <= criteria.latency_ratio_max
            and np.quantile(lc, 0.95) / np.quantile(lb, 0.95) <= criteria.latency_ratio_max
            and (mb.size == 0 or np.median(mc) / np.median(mb) <= criteria.memory_ratio_max)
            and cc / max(nc, 1) - cb / max(nb, 1) >= -criteria.accuracy_drop_max
            and ec / rc - eb / rb <= criteria.error_rate_tolerance
        )
        if ok:
            state.passed += 1
        else:
            state.failed += 1
        if state.failed >= FLAGGER_THRESHOLD:
            return Verdict.FAIL
        if state.passed >= FLAGGER_ITERATIONS:
            return Verdict.PASS
        return Verdict.UNDECIDED
    return judge


@dataclass
class Tally:
    promoted: list[int] = field(default_factory=list)  # requests per arm at the decision
    rolled_back: list[int] = field(default_factory=list)
    undecided: int = 0


def play(run: Run, judge: Callable[[Observations, Observations | None], Verdict], tally: Tally) -> None:
    previous = None
    for n in range(BATCH, HORIZON + 1, BATCH):
        obs = run.observations(n)
        verdict = judge(obs, previous)
        previous = obs
        if verdict is Verdict.PASS:
            tally.promoted.append(n)
            return
        if verdict is Verdict.FAIL:
            tally.rolled_back.append(n)
            return
    tally.undecided += 1


def _pct(count: int, reps: int) -> str:
    return f"{100.0 * count / reps:6.1f}%"


def _samples(values: list[int]) -> str:
    if not values:
        return f"{'—':>7} {'—':>7}"
    return f"{np.median(values):7.0f} {np.percentile(values, 90):7.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=1000, help="repetitions per scenario (default 1000)")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    criteria = Criteria()
    judges = {"modelroll": modelroll_judge(criteria), "kayenta-style": kayenta_judge(criteria),
              "flagger-style": flagger_judge(criteria)}
    print(f"decisions: {args.reps} runs per scenario, a look every {BATCH} requests per arm (shadow pairs unless "
          f"split traffic, every answer labelled), horizon {HORIZON} per arm, alpha {criteria.alpha}, "
          f"seed {args.seed}")
    print(f"criteria: latency ≤ {criteria.latency_ratio_max:.2f}× (p50, p95), "
          f"memory ≤ {criteria.memory_ratio_max:.2f}×, accuracy ≥ −{criteria.accuracy_drop_max * 100:.0f} points, "
          "errors ≤ baseline + "
          f"{criteria.error_rate_tolerance * 100:.0f} points, min {criteria.min_samples} samples per arm")
    print(f"{'scenario':34} {'judge':14} {'promote':>7} {'rollback':>8} {'undecided':>9} "
          f"{'median n':>8} {'p90 n':>7}")
    results: dict[tuple[str, str], Tally] = {}
    started = time.perf_counter()
    for index, scenario in enumerate(SCENARIOS):
        tallies = {name: Tally() for name in judges}
        rng = np.random.default_rng([args.seed, index])
        for _ in range(args.reps):
            run = simulate(scenario, rng)
            for name, judge in judges.items():
                play(run, judge, tallies[name])
        for name, tally in tallies.items():
            results[(scenario.name, name)] = tally
            decided = tally.promoted or tally.rolled_back
            print(f"{scenario.name:34} {name:14} {_pct(len(tally.promoted), args.reps):>7} "
                  f"{_pct(len(tally.rolled_back), args.reps):>8} {_pct(tally.undecided, args.reps):>9} "
                  f"{_samples(decided)}")
    print(f"(n = requests per arm when the judge decided, over the runs it decided; "
          f"{time.perf_counter() - started:.0f} s)")
    return _targets(results, args.reps)


def _targets(results: dict[tuple[str, str], Tally], reps: int) -> int:
    def share(scenario: str, judge: str, kind: str) -> float:
        return len(getattr(results[(scenario, judge)], kind)) / reps

    good, drop = SCENARIOS[0].name, SCENARIOS[3].name
    boundary = [s.name for s in SCENARIOS if s.truth == "boundary"]
    checks = [
        ("clearly good promoted ≥ 99.5%", share(good, "modelroll", "promoted") >= 0.995,
         f"{share(good, 'modelroll', 'promoted'):.1%}"),
        ("false promotion at each boundary ≤ 0.5%",
         all(share(b, "modelroll", "promoted") <= 0.005 for b in boundary),
         ", ".join(f"{share(b, 'modelroll', 'promoted'):.1%}" for b in boundary)),
        ("3-point accuracy drop rolled back ≥ 95% within 20,000 per arm",
         share(drop, "modelroll", "rolled_back") >= 0.95, f"{share(drop, 'modelroll', 'rolled_back'):.1%}"),
        ("median ≤ 3,000 requests per arm to promote the clearly good one",
         bool(results[(good, "modelroll")].promoted) and np.median(results[(good, "modelroll")].promoted) <= 3000,
         f"{np.median(results[(good, 'modelroll')].promoted or [HORIZON + 1]):.0f}"),
    ]
    judges = ("modelroll", "kayenta-style", "flagger-style")
    print("side by side, same runs:")
    for b in boundary:
        figures = ", ".join(f"{j} {share(b, j, 'promoted'):.1%}" for j in judges)
        print(f"  false promotion at '{b}': {figures}")
    print("  good candidate rolled back: " + ", ".join(f"{j} {share(good, j, 'rolled_back'):.1%}" for j in judges))
    speed = {j: float(np.median(results[(good, j)].promoted)) for j in judges if results[(good, j)].promoted}
    if "modelroll" in speed:
        print("  median requests per arm to promote the good one: " + ", ".join(
            f"{j} {n:.0f} ({n / speed['modelroll']:.2f}×)" for j, n in speed.items()))
    missed = 0
    for name, ok, figure in checks:
        print(f"target {'met' if ok else 'MISSED'}: {name}: {figure}")
        missed += not ok
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
