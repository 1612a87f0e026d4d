"""The judges bench/decisions.py compares, each driving the real state machine with the default steps.

- modelroll: `controller.stats.evaluate`, carrying its running intervals from look to look as the reconciler does;
- oracle: the same, except that the accuracy and errors sequences know the true variances (no estimate, no
  null-variance or Wilson adjustment): what a confidence sequence of this kind could do at best, same alphas,
  tuning, strata and looks;
- kayenta-style: fixed-horizon tests at 5 % (Mann-Whitney for latency and memory, two-proportion z for accuracy and
  errors) re-run on all data at every look;
- flagger-style: thresholds on the last interval's figures; pass after 10 passing intervals, fail after 5 failing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from bench.decision.sim import Run
from controller import accuracy, criterion, guardrail, stats
from controller.confseq import mixture_boundary
from controller.machine import Evaluation, RolloutState, step
from controller.observations import Blocks, Observations
from modelroll.types import Criteria, CriterionResult, Phase, RolloutSpec, Verdict

START = datetime(2026, 1, 1, tzinfo=UTC)
FIXED_Z = 1.959963984540054  # Kayenta-style: two-sided 5 %, re-run at every look
FLAGGER_ITERATIONS, FLAGGER_THRESHOLD = 10, 5


class Judge:
    """One judge's view of one run: its verdict at each look, and the state machine it drives."""

    name = "judge"

    def __init__(self, criteria: Criteria, run: Run) -> None:
        self.criteria, self.run = criteria, run
        self.state = RolloutState(rollout_id=1, spec=RolloutSpec(model="bench", baseline="base", candidate="cand",
                                                                   criteria=criteria))
        self.state = step(self.state, START).state  # pending -> the first step
        self.step_start = 0
        self.decided: tuple[str, int] | None = None  # ("promoted" | "rolled_back", requests per arm)

    def verdict(self, n: int) -> tuple[Verdict, tuple[CriterionResult, ...]]:
        raise NotImplementedError

    def look(self, n: int) -> None:
        verdict, results = self.verdict(n)
        in_step = n - self.step_start
        evaluation = Evaluation(results=results, verdict=verdict, step_samples_baseline=in_step,
                                step_samples_candidate=in_step)
        before = self.state.step_index
        self.state = step(self.state, START + timedelta(seconds=n), evaluation).state
        if self.state.step_index != before:
            self.step_start = n
        if self.state.phase is Phase.PROMOTED:
            self.decided = ("promoted", n)
        elif self.state.phase is Phase.ROLLED_BACK:
            self.decided = ("rolled_back", n)


class Modelroll(Judge):
    name = "modelroll"

    def __init__(self, criteria: Criteria, run: Run, horizon: int = 0) -> None:
        super().__init__(criteria, run)
        self.carried: dict[str, tuple[float, float]] = {}
        self.results: tuple[CriterionResult, ...] = ()
        self.horizon = horizon
        self.looked: tuple[int, Mapping[str, tuple[float, float]]] = (0, {})  # the last look and what it carried
        self.partner: Modelroll | None = None  # the oracle reuses modelroll's latency and memory results

    def evaluate(self, obs: Observations) -> list[CriterionResult]:
        return stats.evaluate(self.criteria, obs)

    def accuracy(self, obs: Observations) -> CriterionResult:
        return accuracy.evaluate(self.criteria, obs, *stats.alphas(self.criteria, "accuracy"))

    def verdict(self, n: int) -> tuple[Verdict, tuple[CriterionResult, ...]]:
        obs = self.run.observations(n, self.carried)
        self.looked = (n, obs.carried)
        others_passed = all(r.verdict is Verdict.PASS for r in self.results if r.criterion != accuracy.NAME)
        if self.horizon and n > self.horizon and self.results and others_passed:
            # Beyond the horizon (runs followed further to find the requests a target share needs) only accuracy
            # is still open: the other criteria passed, and a passed criterion stays passed.
            self.results = tuple(self.accuracy(obs) if r.criterion == accuracy.NAME else r for r in self.results)
        else:
            self.results = tuple(self.evaluate(obs))
        self.carried = criterion.carry(self.results)
        return stats.overall(self.results), self.results


class Oracle(Modelroll):
    """modelroll with the accuracy and errors sequences replaced by ones that know the true variances."""

    name = "oracle"

    def evaluate(self, obs: Observations) -> list[CriterionResult]:
        shared = ("latency_p50", "latency_p95", "memory")
        p = self.partner
        if p is not None and p.looked[0] == self.looked[0] and all(
                p.looked[1].get(name) == obs.carried.get(name) for name in shared):
            # Same look, same running intervals: the exact sequences give what modelroll's gave.
            results = list(p.results)
        else:
            results = stats.evaluate(self.criteria, obs)
        by_name = {r.criterion: i for i, r in enumerate(results)}
        results[by_name["accuracy"]] = oracle_accuracy(self.criteria, obs, self.run, results[by_name["accuracy"]])
        results[by_name["errors"]] = oracle_errors(self.criteria, obs, self.run, results[by_name["errors"]])
        return results

    def accuracy(self, obs: Observations) -> CriterionResult:
        return oracle_accuracy(self.criteria, obs, self.run, super().accuracy(obs))


def _radius(sd: float, n: float, alpha: float, n_opt: float) -> float:
    return sd * float(mixture_boundary(n, alpha, n_opt)) / n if n > 0 and alpha > 0 else math.inf


def _stratified_oracle(blocks: Blocks, k: float, var_b: float, var_c: float, alpha_low: float, at_low: float,
                       alpha_high: float, at_high: float) -> tuple[float, float]:
    both = (blocks.baseline_n > 0) & (blocks.candidate_n > 0)
    if not both.any():
        return -math.inf, math.inf
    b_n, c_n = blocks.baseline_n[both].astype(float), blocks.candidate_n[both].astype(float)
    h = b_n * c_n / (b_n + c_n)
    pseudo = float(h.sum())
    est = float((h * (blocks.candidate_hits[both] / c_n - k * blocks.baseline_hits[both] / b_n)).sum()) / pseudo
    sd = math.sqrt(float((h * h / c_n).sum()) * var_c + k * k * float((h * h / b_n).sum()) * var_b) / math.sqrt(pseudo)
    return est - _radius(sd, pseudo, alpha_low, at_low), est + _radius(sd, pseudo, alpha_high, at_high)


def _verdict_result(result: CriterionResult, name: str, look: tuple[float, float], carried: dict[str, tuple[float,
                    float]], verdict: Verdict, extra: dict[str, tuple[float, float]] | None = None) -> CriterionResult:
    sequences = {name: criterion.entry(carried, name, look)}
    for other, interval in (extra or {}).items():
        sequences[other] = criterion.entry(carried, other, interval)
    return replace(result, verdict=verdict, sequences=sequences, message="oracle")


def oracle_accuracy(criteria: Criteria, obs: Observations, run: Run, result: CriterionResult) -> CriterionResult:
    if result.message.startswith("not enough"):
        return result
    truth, carried = run.truth, obs.carried
    alpha_pass, alpha_fail = stats.alphas(criteria, "accuracy")
    share = accuracy.PAIRED_SHARE if run.shadow else 0.0
    look = (-math.inf, math.inf)
    if run.shadow:
        base_only, cand_only, _ = truth.paired
        sd = math.sqrt(base_only + cand_only - (cand_only - base_only) ** 2)
        for n, minus, plus, unknown in accuracy.prefixes_worth_reading(obs.agreement):
            low = (plus - minus - unknown) / n - _radius(sd, n, share * alpha_pass, accuracy.PAIRED_PASS_AT)
            high = (plus - minus + unknown) / n + _radius(sd, n, share * alpha_fail, accuracy.PAIRED_FAIL_AT)
            look = (max(look[0], low), min(look[1], high))
    var_b, var_c = truth.base_acc * (1 - truth.base_acc), truth.cand_acc * (1 - truth.cand_acc)
    served = _stratified_oracle(obs.labels or Blocks(), 1.0, var_b, var_c, (1 - share) * alpha_pass,
                                accuracy.SERVED_PASS_AT, (1 - share) * alpha_fail, accuracy.SERVED_FAIL_AT)
    look = (max(look[0], served[0]), min(look[1], served[1]))
    low, high = criterion.running(carried, accuracy.NAME, look)
    verdict = criterion.lower_limit_verdict(low, high, -criteria.accuracy_drop_max)
    return _verdict_result(result, accuracy.NAME, look, dict(carried), verdict)


def oracle_errors(criteria: Criteria, obs: Observations, run: Run, result: CriterionResult) -> CriterionResult:
    if result.message.startswith("not enough"):
        return result
    truth, carried = run.truth, obs.carried
    alpha_pass, alpha_fail = stats.alphas(criteria, "errors")
    var_b, var_c = truth.base_errors * (1 - truth.base_errors), truth.cand_errors * (1 - truth.cand_errors)
    blocks = obs.requests or Blocks()
    share = guardrail.ABSOLUTE_PASS_SHARE
    absolute = _stratified_oracle(blocks, 1.0, var_b, var_c, alpha_fail, guardrail.FAIL_AT, share * alpha_pass,
                                  guardrail.PASS_AT)
    relative = _stratified_oracle(blocks, guardrail.RELATIVE_FACTOR, var_b, var_c, alpha_fail, guardrail.FAIL_AT,
                                  (1 - share) * alpha_pass, guardrail.PASS_AT)
    a_low, a_high = criterion.running(carried, guardrail.NAME, absolute)
    r_low, r_high = criterion.running(carried, guardrail.RELATIVE, relative)
    limit = criteria.error_rate_tolerance
    verdict = (Verdict.PASS if a_high <= limit or r_high <= 0 else Verdict.FAIL if a_low > limit and r_low > 0 else
               Verdict.UNDECIDED)
    return _verdict_result(result, guardrail.NAME, absolute, dict(carried), verdict,
                           {guardrail.RELATIVE: relative})


def _fixed_verdict(z_bad: list[float]) -> Verdict:
    """Each z is > 0 when that metric is on the wrong side of its allowed level."""
    if any(z > FIXED_Z for z in z_bad):
        return Verdict.FAIL
    if all(z < -FIXED_Z for z in z_bad):
        return Verdict.PASS
    return Verdict.UNDECIDED


def _proportion_z(diff: float, p_b: float, n_b: int, p_c: float, n_c: int) -> float:
    se = math.sqrt(p_b * (1 - p_b) / max(n_b, 1) + p_c * (1 - p_c) / max(n_c, 1))
    return diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0


class _MannWhitney:
    """U = #{(i, j): candidate_i > baseline_j} over growing prefixes of two fixed arrays, updated per look."""

    def __init__(self, candidate: np.ndarray, baseline: np.ndarray) -> None:
        self.c, self.b = candidate, baseline
        self.c_order, self.b_order = np.argsort(candidate), np.argsort(baseline)
        self.c_sorted, self.b_sorted = candidate[self.c_order], baseline[self.b_order]
        self.nc = self.nb = 0
        self.u = 0

    @staticmethod
    def _below(sorted_values: np.ndarray, order: np.ndarray, prefix: int, x: np.ndarray) -> np.ndarray:
        """For each x: how many of the first `prefix` values (in arrival order) are < x."""
        inside = np.concatenate([[0], np.cumsum(order < prefix)])
        return inside[np.searchsorted(sorted_values, x, side="left")]

    def z(self, nc: int, nb: int) -> float:
        new_c, new_b = self.c[self.nc:nc], self.b[self.nb:nb]
        self.u += int(self._below(self.b_sorted, self.b_order, nb, new_c).sum())  # new candidates vs all baselines
        above = self.nc - self._below(self.c_sorted, self.c_order, self.nc, new_b)  # old candidates vs new baselines
        self.u += int(above.sum())  # (latencies and readings are continuous: no ties)
        self.nc, self.nb = nc, nb
        if nc == 0 or nb == 0:
            return 0.0
        return (self.u - nc * nb / 2.0) / math.sqrt(nc * nb * (nc + nb + 1) / 12.0)


class Kayenta(Judge):
    name = "kayenta-style"

    def __init__(self, criteria: Criteria, run: Run) -> None:
        super().__init__(criteria, run)
        self.latency = _MannWhitney(run.latency["candidate"] / criteria.latency_ratio_max, run.latency["baseline"])
        self.memory = _MannWhitney(run.memory["candidate"] / criteria.memory_ratio_max, run.memory["baseline"])

    def verdict(self, n: int) -> tuple[Verdict, tuple[CriterionResult, ...]]:
        obs = self.run.observations(n)
        b, c, cr = obs.baseline, obs.candidate, self.criteria
        if min(b.requests, c.requests) < cr.min_samples:
            return Verdict.UNDECIDED, ()
        z_latency = self.latency.z(c.latency_ms.size, b.latency_ms.size)
        z_memory = self.memory.z(c.memory_bytes.size, b.memory_bytes.size)
        pb, pc = b.correct / max(b.labelled, 1), c.correct / max(c.labelled, 1)
        z_accuracy = -_proportion_z(pc - pb + cr.accuracy_drop_max, pb, b.labelled, pc, c.labelled)
        eb, ec = b.errors / b.requests, c.errors / c.requests
        z_errors = _proportion_z(ec - eb - cr.error_rate_tolerance, eb, b.requests, ec, c.requests)
        return _fixed_verdict([z_latency, z_memory, z_accuracy, z_errors]), ()


class Flagger(Judge):
    name = "flagger-style"

    def __init__(self, criteria: Criteria, run: Run) -> None:
        super().__init__(criteria, run)
        self.passed = self.failed = 0
        self.previous = 0

    def verdict(self, n: int) -> tuple[Verdict, tuple[CriterionResult, ...]]:
        run, cr, before = self.run, self.criteria, self.previous
        self.previous = n
        labelled_now, labelled_before = max(n - run.delay, 0), max(before - run.delay, 0)
        figures = {}
        for arm in ("baseline", "candidate"):
            ok0, ok1 = int(run.ok[arm][before]), int(run.ok[arm][n])
            lat = run.latency[arm][ok0:ok1]
            mem = run.memory[arm][before // 50: n // 50]
            labelled = int(run.ok[arm][labelled_now] - run.ok[arm][labelled_before])
            correct = int(run.correct[arm][labelled_now] - run.correct[arm][labelled_before])
            figures[arm] = (lat, mem, n - before, (n - before) - (ok1 - ok0), labelled, correct)
        (lb, mb, rb, eb, nb, cb), (lc, mc, rc, ec, nc, cc) = figures["baseline"], figures["candidate"]
        if lb.size == 0 or lc.size == 0:
            return Verdict.UNDECIDED, ()
        ok = (
            np.quantile(lc, 0.5) / np.quantile(lb, 0.5) <= cr.latency_ratio_max
            and np.quantile(lc, 0.95) / np.quantile(lb, 0.95) <= cr.latency_ratio_max
            and (mb.size == 0 or mc.size == 0 or np.median(mc) / np.median(mb) <= cr.memory_ratio_max)
            and (nb == 0 or nc == 0 or cc / nc - cb / nb >= -cr.accuracy_drop_max)
            and ec / rc - eb / rb <= cr.error_rate_tolerance
        )
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        if self.failed >= FLAGGER_THRESHOLD:
            return Verdict.FAIL, ()
        if self.passed >= FLAGGER_ITERATIONS:
            return Verdict.PASS, ()
        return Verdict.UNDECIDED, ()


JUDGES: dict[str, Callable[[Criteria, Run], Judge]] = {
    "modelroll": Modelroll, "oracle": Oracle, "kayenta-style": Kayenta, "flagger-style": Flagger}


@dataclass
class Outcome:
    """Per judge: ("promoted" | "rolled_back" | "undecided", requests per arm at the decision or the horizon)."""

    decisions: dict[str, tuple[str, int]]
    intervals: dict[str, bool] | None = None  # A/A: sequence name -> its running interval still holds the truth


def play(run: Run, criteria: Criteria, judges: list[str], horizon: int, extend_to: int = 0) -> Outcome:
    """Every judge looks after every `run.look_every` requests per arm, up to the horizon (or `extend_to` for the
    judges still undecided: those runs give the requests a target share needs)."""
    active: list[Judge] = []
    for name in judges:
        judge = (Oracle(criteria, run, horizon) if name == "oracle" else Modelroll(criteria, run, horizon)
                 if name == "modelroll" else JUDGES[name](criteria, run))
        if isinstance(judge, Oracle) and active and isinstance(active[0], Modelroll):
            judge.partner = active[0]  # modelroll looks first at each look: the oracle reuses what it can
        active.append(judge)
    decisions: dict[str, tuple[str, int]] = {}
    last = max(horizon, extend_to)
    for n in range(run.look_every, last + 1, run.look_every):
        for judge in active:
            judge.look(n)
            if judge.decided is not None:
                decisions[judge.name] = judge.decided
        active = [j for j in active if j.decided is None]
        if not active or (n >= horizon and not extend_to):
            break
    for judge in active:
        decisions[judge.name] = ("undecided", last)
    return Outcome(decisions)


def cover(run: Run, criteria: Criteria, horizon: int, truth: dict[str, float]) -> Outcome:
    """A/A: modelroll's running intervals after every look to the horizon; did each hold the truth at every look?
    (Checked at each look, not only the last: a look that excludes the looks before widens the running interval to
    both, so a later interval may hold the truth again after one missed it.)"""
    carried: dict[str, tuple[float, float]] = {}
    held = dict.fromkeys(truth, True)
    for n in range(run.look_every, horizon + 1, run.look_every):
        carried = criterion.carry(stats.evaluate(criteria, run.observations(n, carried)))
        for name, value in truth.items():
            if name in carried and not carried[name][0] <= value <= carried[name][1]:
                held[name] = False
    return Outcome({}, held)
