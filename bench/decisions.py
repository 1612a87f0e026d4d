"""Decision quality: modelroll's judge through the real state machine and default steps, beside a known-variance
oracle and Kayenta-style and Flagger-style judges of the same runs; the issue's targets decide the exit code.

Run: .venv/bin/python bench/decisions.py [--reps 1000] [--jobs 2] [--seed 20240601] [--only KEY,...]
A target a confidence sequence cannot reach (the oracle misses it too) holds if modelroll comes within 1.2× of the
oracle's requests (docs/statistics.md gives the arithmetic).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import binom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.decision.judges import Outcome, cover, play
from bench.decision.sim import LOOK_EVERY, Scenario, simulate
from controller import accuracy, guardrail, stats
from modelroll.types import Criteria

ORACLE_SLACK = 1.2
BASELINES = (0.97, 0.90)
DELAYS = (0, 1000)


def _scenarios() -> list[Scenario]:
    out = []
    for acc in BASELINES:
        for delay in DELAYS:
            tag = f"{acc:.2f}, labels {delay} late"
            out.append(Scenario(f"good-split-{acc:.2f}-{delay}", f"clearly good, split ({tag})", "good",
                                accuracy=acc, delay=delay, extend_to=60_000 if acc < 0.95 else 0))
            out.append(Scenario(f"good-pairs-{acc:.2f}-{delay}", f"clearly good, pairs 2-4 % differ ({tag})", "good",
                                accuracy=acc, delay=delay, pairing="shadow", disagree=(0.02, 0.04)))
            out.append(Scenario(f"good-agree-{acc:.2f}-{delay}", f"clearly good, pairs 0.5 % differ ({tag})", "good",
                                accuracy=acc, delay=delay, pairing="shadow", disagree=(0.005, 0.005)))
    out.append(Scenario("boundary-latency", "latency at boundary 0.50× (pairs, 0.97)", "boundary",
                        latency_ratio=0.50, pairing="shadow", disagree=(0.03, 0.03), oracle=False))
    for acc in BASELINES:
        out.append(Scenario(f"boundary-pairs-{acc:.2f}", f"accuracy −2 points, pairs 3 % differ ({acc:.2f})",
                            "boundary", accuracy=acc, drop=0.02, pairing="shadow", disagree=(0.03, 0.03),
                            oracle=False))
        out.append(Scenario(f"boundary-split-{acc:.2f}", f"accuracy −2 points, split ({acc:.2f})", "boundary",
                            accuracy=acc, drop=0.02, oracle=False))
    for acc in BASELINES:
        extend = 60_000  # runs still undecided at 20,000 go on, to measure the requests 95 % of rollbacks need
        out.append(Scenario(f"drop-split-{acc:.2f}", f"accuracy −3 points, split ({acc:.2f})", "bad",
                            accuracy=acc, drop=0.03, extend_to=extend))
        out.append(Scenario(f"drop-pairs-{acc:.2f}", f"accuracy −3 points, independent pairs ({acc:.2f})", "bad",
                            accuracy=acc, drop=0.03, pairing="independent", extend_to=extend))
    out.append(Scenario("errors-5x", "errors 5× the baseline's 1 % (split, 0.97)", "bad", cand_errors=0.05))
    out.append(Scenario("aa-pairs", "A/A, identical answers (pairs)", "aa", drop=0.0, pairing="shadow",
                        disagree=(0.0, 0.0), latency_ratio=1.0, memory_ratio=1.0, oracle=False))
    out.append(Scenario("aa-split", "A/A, split", "aa", drop=0.0, latency_ratio=1.0, memory_ratio=1.0,
                        oracle=False))
    return out


SCENARIOS = _scenarios()
AA_TRUTH = {"latency_p50": 1.0, "latency_p95": 1.0, "memory": 1.0, "accuracy": 0.0, "errors": 0.0,
            "errors_relative": -0.01}


def _shares(criteria: Criteria) -> dict[str, float]:
    """Each interval's alpha share (both sides), which A/A misses must stay under."""
    out = {name: criteria.alpha * (s.pass_side + s.fail_side) for name, s in stats.ALPHA_SHARES.items()}
    p, f = stats.alphas(criteria, "errors")
    out["errors"] = guardrail.ABSOLUTE_PASS_SHARE * p + f
    out["errors_relative"] = (1 - guardrail.ABSOLUTE_PASS_SHARE) * p + f
    return out


def _chunk(args: tuple[int, int, int, int]) -> tuple[list[Outcome], float]:
    """Runs first..first+count of one scenario, and the CPU seconds they took."""
    started = time.process_time()
    index, first, count, seed = args
    scenario, criteria = SCENARIOS[index], Criteria()
    judges = ["modelroll", *(["oracle"] if scenario.oracle else []), "kayenta-style", "flagger-style"]
    out = []
    for rep in range(first, first + count):
        run = simulate(scenario, np.random.default_rng([seed, index, rep]))
        if scenario.truth == "aa":
            out.append(cover(run, criteria, scenario.horizon, AA_TRUTH))
        else:
            out.append(play(run, criteria, judges, scenario.horizon, scenario.extend_to))
    return out, time.process_time() - started


@dataclass
class Tally:
    """One judge on one scenario: what it decided in each run, and when (requests per arm)."""

    kinds: list[str] = field(default_factory=list)
    n: list[int] = field(default_factory=list)

    def share(self, kind: str, horizon: int) -> float:
        return sum(k == kind and n <= horizon for k, n in zip(self.kinds, self.n, strict=True)) / len(self.kinds)

    def requests(self, kind: str, horizon: int) -> list[int]:
        return [n for k, n in zip(self.kinds, self.n, strict=True) if k == kind and n <= horizon]

    def quantile(self, kind: str, q: float) -> float:
        """Requests per arm by which a share q of all runs had this decision (inf if fewer ever did)."""
        times = sorted(n if k == kind else math.inf for k, n in zip(self.kinds, self.n, strict=True))
        return float(times[min(math.ceil(q * len(times)) - 1, len(times) - 1)]) if times else math.inf


def _fmt_n(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:,.0f}"


@dataclass
class Check:
    label: str
    ok: bool
    figure: str
    note: str = ""


def _rate_met(share: float, goal: float, at_least: bool, runs: int) -> bool:
    """Whether `runs` runs are consistent with a true rate on the right side of `goal`: the observed count lies
    within binomial(runs, goal)'s 99 % quantile (the rule of tests/unit/test_stats_simulation.py). A method whose
    true rate is exactly its alpha share would miss a literal "≤ share" in about half of the benches."""
    count = round(share * runs)
    return bool(count >= binom.ppf(0.01, runs, goal) if at_least else count <= binom.ppf(0.99, runs, goal))


def _rate_note(share: float, goal: float, at_least: bool, runs: int) -> str:
    """Said when a rate target holds by the binomial rule but not literally."""
    if (share >= goal) if at_least else (share <= goal):
        return ""
    bound = binom.ppf(0.01 if at_least else 0.99, runs, goal)
    return (f"{round(share * runs)} of {runs:,}; a true {goal:.1%} gives {'as few as' if at_least else 'up to'} "
            f"{bound:.0f} in 99 % of benches of {runs:,} runs")


def _rate_check(label: str, share: float, goal: float, runs: int, pct_fmt: str = ".1%") -> Check:
    """A rate that must stay ≤ goal (false promotions, false rollbacks, intervals that miss)."""
    return Check(label, _rate_met(share, goal, False, runs), format(share, pct_fmt), _rate_note(share, goal, False,
                                                                                                  runs))


def _target(label: str, ours: float, goal: float, at_least: bool, oracle: float | None, ours_n: float,
            oracle_n: float | None, pct: bool = True, runs: int = 1) -> Check:
    """A target on a share (pct) or on requests; missed ones hold when the oracle misses too and we are within 1.2×
    of the oracle's requests (ours_n / oracle_n: the requests each needs for the target)."""
    fmt: Callable[[float], str] = (lambda v: f"{v:.1%}") if pct else _fmt_n
    met = _rate_met(ours, goal, at_least, runs) if pct else ours >= goal if at_least else ours <= goal
    figure = fmt(ours)
    if met:
        return Check(label, True, figure, _rate_note(ours, goal, at_least, runs) if pct else "")
    if oracle is None:
        return Check(label, False, figure, "no oracle for this scenario")
    oracle_met = _rate_met(oracle, goal, at_least, runs) if pct else oracle >= goal if at_least else oracle <= goal
    ratio = ours_n / oracle_n if oracle_n and math.isfinite(ours_n) and math.isfinite(oracle_n) else math.inf
    note = (f"oracle {fmt(oracle)}; requests for the target: ours {_fmt_n(ours_n)}, oracle "
            f"{_fmt_n(oracle_n or math.inf)} ({ratio:.2f}×)")
    if oracle_met:
        return Check(label, False, figure, note + "; the oracle reaches it")
    return Check(label, ratio <= ORACLE_SLACK, figure, "out of reach (the oracle misses it too): " + note)


def _median_goal(s: Scenario) -> int:
    """The issue's median requests per arm to promote a clearly good candidate."""
    if s.pairing == "split":
        return 4000 if s.accuracy > 0.95 else 10_000
    return 2500 if s.disagree[0] >= 0.02 else 1000


def _checks(tallies: dict[tuple[str, str], Tally], aa: dict[str, dict[str, float]], criteria: Criteria,
            runs: int) -> list[Check]:
    by_key = {s.key: s for s in SCENARIOS}
    checks: list[Check] = []

    def tally(key: str, judge: str = "modelroll") -> Tally | None:
        return tallies.get((key, judge))

    for key, s in by_key.items():
        ours, oracle = tally(key), tally(key, "oracle")
        if ours is None:
            continue
        h = s.horizon
        if s.truth == "good":
            goal = _median_goal(s)
            checks.append(_target(f"{s.name}: promoted ≥ 99.5 %", ours.share("promoted", h), 0.995, True,
                                  oracle.share("promoted", h) if oracle else None, ours.quantile("promoted", 0.995),
                                  oracle.quantile("promoted", 0.995) if oracle else None, runs=runs))
            checks.append(_target(f"{s.name}: median ≤ {goal:,} per arm", ours.quantile("promoted", 0.5), goal, False,
                                  oracle.quantile("promoted", 0.5) if oracle else None,
                                  ours.quantile("promoted", 0.5), oracle.quantile("promoted", 0.5) if oracle else None,
                                  pct=False))
            checks.append(_rate_check(f"{s.name}: rolled back ≤ 0.5 %", ours.share("rolled_back", h), 0.005, runs))
        elif s.truth == "boundary":
            checks.append(_rate_check(f"{s.name}: promoted ≤ 0.5 %", ours.share("promoted", h), 0.005, runs))
        elif key == "errors-5x":
            checks.append(_target(f"{s.name}: rolled back ≥ 99 %", ours.share("rolled_back", h), 0.99, True,
                                  oracle.share("rolled_back", h) if oracle else None,
                                  ours.quantile("rolled_back", 0.99), oracle.quantile("rolled_back", 0.99)
                                  if oracle else None, runs=runs))
            checks.append(_target(f"{s.name}: median ≤ 800 per arm", ours.quantile("rolled_back", 0.5), 800, False,
                                  oracle.quantile("rolled_back", 0.5) if oracle else None,
                                  ours.quantile("rolled_back", 0.5), oracle.quantile("rolled_back", 0.5)
                                  if oracle else None, pct=False))
        elif s.truth == "bad":
            checks.append(_target(f"{s.name}: rolled back ≥ 95 % within {h:,}", ours.share("rolled_back", h), 0.95,
                                  True, oracle.share("rolled_back", h) if oracle else None,
                                  ours.quantile("rolled_back", 0.95),
                                  oracle.quantile("rolled_back", 0.95) if oracle else None, runs=runs))
    shares = _shares(criteria)
    for key, misses in aa.items():
        for name, rate in misses.items():
            checks.append(_rate_check(f"{by_key[key].name}: {name} interval ever misses ≤ {shares[name]:.2%}",
                                      rate, shares[name], runs, ".2%"))
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=1000, help="runs per scenario (default 1000)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--only", default="", help="comma-separated scenario keys (default: all)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.jobs < 1:
        parser.error("--reps and --jobs must be >= 1")
    only = {k for k in args.only.split(",") if k}
    unknown = only - {s.key for s in SCENARIOS}
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {[s.key for s in SCENARIOS]}")
    criteria = Criteria()
    print(f"decisions: {args.reps} runs per scenario through the state machine and the default steps (6 steps, "
          f"≥ 200 candidate requests each), a look every {min(LOOK_EVERY)}-{max(LOOK_EVERY)} requests per arm "
          f"(drawn per run), both arms alike, horizon 20,000 per arm, alpha {criteria.alpha}, seed {args.seed}")
    print(f"criteria: latency ≤ {criteria.latency_ratio_max:.2f}× (p50, p95), memory ≤ "
          f"{criteria.memory_ratio_max:.2f}×, accuracy ≥ −{criteria.accuracy_drop_max * 100:.0f} points, errors ≤ "
          f"max(baseline + {criteria.error_rate_tolerance * 100:.0f} point, {guardrail.RELATIVE_FACTOR:g}× baseline); "
          f"baseline errors 1 %; pairs: a shadow step's labelled and unlabelled pairs (paired share "
          f"{accuracy.PAIRED_SHARE:.0%} of accuracy's alpha)")
    started = time.perf_counter()
    chosen = [i for i, s in enumerate(SCENARIOS) if not only or s.key in only]
    size = max(1, min(50, math.ceil(args.reps / max(1, 4 * args.jobs))))
    tasks = [(i, first, min(size, args.reps - first), args.seed) for i in chosen for first in range(0, args.reps, size)]
    outcomes: dict[int, list[Outcome]] = {i: [] for i in chosen}
    cpu: dict[int, float] = dict.fromkeys(chosen, 0.0)
    with ProcessPoolExecutor(args.jobs) as pool:
        for task, (result, seconds) in zip(tasks, pool.map(_chunk, tasks), strict=True):
            outcomes[task[0]].extend(result)
            cpu[task[0]] += seconds
    tallies: dict[tuple[str, str], Tally] = {}
    aa: dict[str, dict[str, float]] = {}
    print(f"\n{'scenario':52} {'judge':14} {'promote':>7} {'rollback':>8} {'undecided':>9} {'median n':>8} "
          f"{'p90 n':>7}")
    for i in chosen:
        s = SCENARIOS[i]
        if s.truth == "aa":
            names = AA_TRUTH.keys()
            aa[s.key] = {name: sum(not o.intervals[name] for o in outcomes[i] if o.intervals) / len(outcomes[i])
                         for name in names}
            print(f"{s.name:52} {'modelroll':14} intervals ever missing the truth: " + ", ".join(
                f"{name} {rate:.2%}" for name, rate in aa[s.key].items()))
            continue
        for judge in outcomes[i][0].decisions:
            t = Tally([o.decisions[judge][0] for o in outcomes[i]], [o.decisions[judge][1] for o in outcomes[i]])
            tallies[(s.key, judge)] = t
            decided = t.requests("promoted", s.horizon) + t.requests("rolled_back", s.horizon)
            median = f"{np.median(decided):8.0f} {np.percentile(decided, 90):7.0f}" if decided else f"{'—':>8} {'—':>7}"
            print(f"{s.name:52} {judge:14} {t.share('promoted', s.horizon):7.1%} "
                  f"{t.share('rolled_back', s.horizon):8.1%} "
                  f"{1 - t.share('promoted', s.horizon) - t.share('rolled_back', s.horizon):9.1%} {median}")
    print(f"(n = requests per arm at the decision, over the runs decided within the horizon; "
          f"{time.perf_counter() - started:.0f} s, CPU per scenario: "
          + ", ".join(f"{SCENARIOS[i].key} {cpu[i]:.0f} s" for i in chosen) + ")\n")
    checks = _checks(tallies, aa, criteria, args.reps)
    failed = 0
    for c in checks:
        print(f"target {'held' if c.ok else 'MISSED'}: {c.label}: {c.figure}" + (f" — {c.note}" if c.note else ""))
        failed += not c.ok
    print(f"\n{len(checks) - failed} of {len(checks)} targets held")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
