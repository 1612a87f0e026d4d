"""The pipeline verbs' pure parts: following a rollout to an exit code, the Markdown report, CLI-worded errors."""

from __future__ import annotations

from typing import Any

import pytest

from controller.cli_api import for_cli
from controller.cli_pipeline import follow, live_line, rollout_markdown

BASE: dict[str, Any] = {"id": 7, "model": "digits", "baseline": "fp32", "candidate": "int8", "phase": "shadow",
                        "step_index": 0, "steps_total": 3, "weights": {"fp32": 100.0, "int8": 0.0}, "results": [],
                        "reason": "started at step 1 of 3: shadow (0 % served, mirrored)"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(states: list[dict[str, Any]], *, timeout_s: float = 100.0, until_approval: bool = False
        ) -> tuple[int, list[str], float]:
    clock, printed = Clock(), []
    looks = iter(states)
    last: dict[str, Any] = {}

    def read() -> dict[str, Any]:
        nonlocal last
        last = next(looks, last)
        return last

    code, _ = follow(read, printed.append, timeout_s=timeout_s, interval_s=2.0, until_approval=until_approval,
                     clock=clock, sleep=clock.sleep)
    return code, printed, clock.now


@pytest.mark.parametrize(("phase", "code"), [("promoted", 0), ("rolled_back", 1), ("aborted", 1), ("failed", 1)])
def test_wait_exits_with_the_outcome_and_prints_each_change_once(phase: str, code: int) -> None:
    progressing = {**BASE, "phase": "progressing", "step_index": 1, "weights": {"fp32": 90.0, "int8": 10.0}}
    got, printed, _ = run([BASE, BASE, progressing, progressing, {**progressing, "phase": phase}])
    assert got == code
    assert len(printed) == 3 and printed[0].startswith("rollout 7: shadow, step 1/3, fp32 100 %, int8 0 %")


def test_wait_times_out_with_3_and_waits_no_longer_than_asked() -> None:
    code, printed, elapsed = run([BASE], timeout_s=9)
    assert code == 3 and elapsed == pytest.approx(9) and len(printed) == 1


def test_wait_until_approval_stops_with_4_only_when_asked() -> None:
    waiting = {**BASE, "approval": {"waiting": True}}
    assert run([waiting], until_approval=True)[0] == 4
    code, printed, _ = run([waiting], timeout_s=5)
    assert code == 3 and "(waiting for approval)" in printed[0]


def test_the_markdown_report_has_the_decision_the_criteria_and_the_offline_table() -> None:
    result = {"criterion": "latency_p50", "verdict": "pass", "estimate": 0.12, "ci_low": 0.11, "ci_high": 0.13,
              "threshold": 0.5, "baseline_n": 900, "candidate_n": 880,
              "message": "candidate p50 is 0.12× baseline [0.11, 0.13], needs ≤ 0.50×: passes"}
    rollout = {**BASE, "phase": "promoted", "reason": "promoted: every criterion passed", "results": [result]}
    events = [{"seq": 1, "ts": "2026-12-06T03:00:00+00:00", "actor": "token:ci", "reason": "created by token:ci"}]
    text = rollout_markdown(rollout, events, None, "http://127.0.0.1:8081/rollouts/7")
    assert "### Rollout 7 of `digits`: `int8` vs `fp32` — **promoted**" in text
    assert "| latency_p50 | pass | 0.12 [0.11, 0.13] | 0.5 | 900 / 880 |" in text
    assert "No optimizer report for this candidate" in text and "http://127.0.0.1:8081/rollouts/7" in text
    assert "1. 2026-12-06T03:00:00 UTC, token:ci: created by token:ci" in text


@pytest.mark.parametrize(("api", "cli"), [
    ("rollout 9 does not exist; list them with GET /v1/rollouts",
     "rollout 9 does not exist; list them with `modelroll rollout list`"),
    ("it changed since you read it; GET /v1/rollouts/3 and retry with its ETag",
     "it changed since you read it; read it again (`modelroll rollout status 3`) and retry"),
    ("optimization job 4 does not exist; list them with GET /v1/optimizations",
     "optimization job 4 does not exist; list them with `modelroll optimize list`"),
])
def test_errors_name_the_command_not_the_http_route(api: str, cli: str) -> None:
    assert for_cli(api) == cli


def test_live_line_names_each_criterion() -> None:
    line = live_line({**BASE, "results": [{"criterion": "memory", "verdict": "undecided"}]})
    assert line.endswith("; memory=undecided")
