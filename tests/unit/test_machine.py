"""The rollout state machine: every transition, the manual overrides, and replay gives the same state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.machine import (
    ALLOWED,
    AUTOMATIC,
    COMMANDS,
    Command,
    Evaluation,
    Notify,
    PublishSplit,
    RecordEvent,
    RolloutState,
    SetProduction,
    Transition,
    state_from_dict,
    state_to_dict,
    step,
)
from modelroll.errors import Conflict, Forbidden, InvalidInput
from modelroll.types import CriterionResult, DeadlinePolicy, Phase, RolloutSpec, Step, Verdict

T0 = datetime(2025, 1, 1, tzinfo=UTC)
STEPS = (Step(0, shadow=True, min_duration_s=10, min_samples=5),
         Step(10, min_duration_s=10, min_samples=5),
         Step(100, min_duration_s=10, min_samples=5, max_duration_s=60))
SPEC = RolloutSpec(model="digits", baseline="fp32", candidate="int8", steps=STEPS)


def result(name: str, verdict: Verdict, message: str = "") -> CriterionResult:
    return CriterionResult(criterion=name, verdict=verdict, estimate=0.4, ci_low=0.3, ci_high=0.5, threshold=0.5,
                           baseline_value=10.0, candidate_value=4.0, baseline_n=100, candidate_n=100,
                           method="test", message=message or f"{name} {verdict.value}")


def ev(verdict: Verdict, samples: int = 100) -> Evaluation:
    names = ("latency_p50", "latency_p95", "memory", "accuracy", "errors")
    results = tuple(result(n, Verdict.PASS if verdict is Verdict.PASS else
                           (verdict if n == "latency_p95" else Verdict.PASS)) for n in names)
    return Evaluation(results, verdict, samples, samples)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def started(spec: RolloutSpec = SPEC) -> RolloutState:
    return step(RolloutState(rollout_id=7, spec=spec), T0).state


def cmd(kind: str, role: str = "operator", **kw: object) -> Command:
    return Command(kind=kind, actor="alice", role=role, **kw)  # type: ignore[arg-type]


def splits(t: Transition) -> list[PublishSplit]:
    return [a for a in t.actions if isinstance(a, PublishSplit)]


def test_pending_starts_at_the_first_step_and_publishes_a_shadow_split() -> None:
    t = step(RolloutState(rollout_id=7, spec=SPEC), T0)
    assert t.state.phase is Phase.SHADOW and t.state.step_index == 0 and t.state.seq == 1
    assert splits(t) == [PublishSplit({"fp32": 100.0, "int8": 0.0}, "int8", 0, "fp32")]
    assert t.events[0].kind == "started" and t.events[0].seq == 1


def test_pending_without_shadow_step_starts_progressing() -> None:
    spec = RolloutSpec(model="digits", baseline="fp32", candidate="int8", steps=(Step(5), Step(100)))
    t = step(RolloutState(rollout_id=1, spec=spec), T0)
    assert t.state.phase is Phase.PROGRESSING
    assert splits(t) == [PublishSplit({"fp32": 95.0, "int8": 5.0}, None, 0, "fp32")]


def test_advance_needs_pass_and_min_duration_and_min_samples() -> None:
    s = started()
    assert not step(s, at(5), ev(Verdict.PASS)).changed  # too early
    assert not step(s, at(20), ev(Verdict.PASS, samples=4)).changed  # too few samples
    assert not step(s, at(20), ev(Verdict.UNDECIDED)).changed  # undecided
    t = step(s, at(20), ev(Verdict.PASS))
    assert t.state.phase is Phase.PROGRESSING and t.state.step_index == 1 and t.state.step_started_at == at(20)
    assert splits(t) == [PublishSplit({"fp32": 90.0, "int8": 10.0}, None, 1, "fp32")]
    assert t.events[0].kind == "advanced" and "step 2 of 3" in t.events[0].reason
    assert t.events[0].evidence["results"][0]["verdict"] == "pass"
    assert any(isinstance(a, Notify) for a in t.actions)


def test_last_step_passing_promotes_to_candidate_only() -> None:
    s = step(step(started(), at(20), ev(Verdict.PASS)).state, at(40), ev(Verdict.PASS)).state
    assert s.step_index == 2
    t = step(s, at(55), ev(Verdict.PASS))
    assert t.state.phase is Phase.PROMOTED
    assert splits(t) == [PublishSplit({"int8": 100.0}, None, 2, "int8", final=True)]
    assert [a for a in t.actions if isinstance(a, SetProduction)] == [
        SetProduction(variant="int8", actor="controller", reason=t.state.reason)]
    assert not step(t.state, at(100), ev(Verdict.FAIL)).changed  # terminal: nothing moves


@pytest.mark.parametrize("phase_cmds", [[], [("pause", None)], [("set_weight", 30.0)]])
def test_a_failing_criterion_rolls_back_at_once_even_when_paused(
        phase_cmds: list[tuple[str, float | None]]) -> None:
    s = step(started(), at(20), ev(Verdict.PASS)).state
    for c in phase_cmds:
        s = step(s, at(21), command=cmd(c[0], weight_pct=c[1])).state
    t = step(s, at(22), ev(Verdict.FAIL))
    assert t.state.phase is Phase.ROLLED_BACK
    assert splits(t) == [PublishSplit({"fp32": 100.0}, None, 1, "fp32", final=True)]
    assert "latency_p95" in t.events[0].reason and t.events[0].evidence["verdict"] == "fail"


def test_deadline_undecided_holds_and_tells_once_never_promotes() -> None:
    s = step(step(started(), at(20), ev(Verdict.PASS)).state, at(40), ev(Verdict.PASS)).state
    t = step(s, at(40 + 61), ev(Verdict.UNDECIDED))
    assert t.state.phase is Phase.PROGRESSING and t.state.deadline_noted
    assert t.events[0].kind == "deadline" and "never promoting on undecided" in t.events[0].reason
    assert not splits(t)
    assert not step(t.state, at(200), ev(Verdict.UNDECIDED)).changed  # told once
    assert step(t.state, at(201), ev(Verdict.PASS)).state.phase is Phase.PROMOTED


def test_deadline_with_rollback_policy_rolls_back() -> None:
    spec = RolloutSpec(model="digits", baseline="fp32", candidate="int8", on_deadline=DeadlinePolicy.ROLLBACK,
                       steps=(Step(50, min_duration_s=0, min_samples=1, max_duration_s=30), Step(100)))
    t = step(started(spec), at(31), ev(Verdict.UNDECIDED))
    assert t.state.phase is Phase.ROLLED_BACK and "by policy" in t.state.reason


def cannot_serve(verdict: Verdict = Verdict.UNDECIDED, samples: int = 0) -> Evaluation:
    return Evaluation(ev(verdict).results, verdict, samples, samples,
                      candidate_cannot_serve="artifact hash mismatch: the bytes of artifact 1a2b… changed on disk")


@pytest.mark.parametrize("phase_cmds", [[], [("pause", None)], [("set_weight", 30.0)]])
def test_a_candidate_that_cannot_serve_fails_the_rollout_at_once_with_the_reason_even_when_paused(
        phase_cmds: list[tuple[str, float | None]]) -> None:
    s = step(started(), at(20), ev(Verdict.PASS)).state  # progressing at 10 %
    for c in phase_cmds:
        s = step(s, at(21), command=cmd(c[0], weight_pct=c[1])).state
    t = step(s, at(22), cannot_serve())
    assert t.state.phase is Phase.FAILED and t.state.hold == "" and t.state.resume_phase is None
    event = t.events[0]
    assert event.kind == "failed" and event.actor == "controller" and event.to_phase is Phase.FAILED
    assert "candidate 'int8' cannot serve (artifact hash mismatch: the bytes of artifact 1a2b…" in event.reason
    assert event.reason.endswith("'fp32' serves all traffic") and t.state.reason == event.reason
    assert event.evidence["cannot_serve"] == {"candidate": cannot_serve().candidate_cannot_serve}
    # production stays what served before: all traffic on the baseline, as a final split, nothing promoted
    assert splits(t) == [PublishSplit({"fp32": 100.0}, None, 1, "fp32", final=True)]
    assert t.state.serving == "fp32" and not [a for a in t.actions if isinstance(a, SetProduction)]
    assert [a.kind for a in t.actions if isinstance(a, Notify)] == ["failed"]
    assert not step(t.state, at(23), cannot_serve()).changed  # terminal


def test_cannot_serve_wins_over_every_verdict_and_in_shadow_too() -> None:
    shadow = started()
    assert shadow.phase is Phase.SHADOW
    for verdict in Verdict:
        assert step(shadow, at(30), cannot_serve(verdict, samples=100)).state.phase is Phase.FAILED
    rule = AUTOMATIC["cannot_serve"]
    assert (rule.to, rule.kind) == (Phase.FAILED, "failed")
    assert all(rule.to in ALLOWED[phase] for phase in rule.phases)  # the rule stays inside the one table
    assert not step(shadow, at(30), ev(Verdict.UNDECIDED)).changed  # no report, no failure


def test_pause_holds_the_schedule_and_resume_restarts_the_step_clock() -> None:
    s = step(started(), at(20), ev(Verdict.PASS)).state
    p = step(s, at(21), command=cmd("pause", reason="looking"))
    assert p.state.phase is Phase.PAUSED and p.state.resume_phase is Phase.PROGRESSING and not splits(p)
    assert not step(p.state, at(100), ev(Verdict.PASS)).changed
    r = step(p.state, at(101), command=cmd("resume"))
    assert r.state.phase is Phase.PROGRESSING and r.state.step_started_at == at(101)
    assert not step(r.state, at(105), ev(Verdict.PASS)).changed
    assert step(r.state, at(112), ev(Verdict.PASS)).state.step_index == 2


def test_resume_keeps_a_weight_set_by_hand_unless_the_steps_own_is_higher() -> None:
    s = step(started(), at(20), ev(Verdict.PASS)).state  # step 2: 10 %
    w = step(s, at(21), command=cmd("set_weight", weight_pct=40))
    assert w.state.phase is Phase.PAUSED and w.state.hold == "manual"
    assert splits(w) == [PublishSplit({"fp32": 60.0, "int8": 40.0}, None, 1, "fp32")]
    kept = step(w.state, at(30), command=cmd("resume"))
    assert kept.state.phase is Phase.PROGRESSING and kept.state.weight_pct == 40.0 and not splits(kept)
    assert "keeping the 40 % set by hand (above the step's 10 %)" in kept.state.reason
    lower = step(step(s, at(21), command=cmd("set_weight", weight_pct=2)).state, at(30), command=cmd("resume"))
    assert splits(lower) == [PublishSplit({"fp32": 90.0, "int8": 10.0}, None, 1, "fp32")]
    assert "at the step's 10 % (higher than the 2 % set by hand)" in lower.state.reason


def test_pause_and_resume_are_idempotent() -> None:
    s = step(started(), at(20), ev(Verdict.PASS)).state
    assert not step(s, at(21), command=cmd("resume")).changed  # already running: nothing to do, nothing recorded
    paused = step(s, at(21), command=cmd("pause")).state
    again = step(paused, at(22), command=cmd("pause"))
    assert not again.changed and again.state == paused
    with pytest.raises(Conflict, match="cannot resume rollout 7: it is aborted"):
        step(step(paused, at(23), command=cmd("abort")).state, at(24), command=cmd("resume"))


def test_promote_now_needs_admin_and_is_an_override() -> None:
    s = started()
    with pytest.raises(Forbidden, match="needs the admin role"):
        step(s, at(1), command=cmd("promote"))
    t = step(s, at(1), command=cmd("promote", role="admin", reason="hotfix"))
    assert t.state.phase is Phase.PROMOTED and t.events[0].kind == "override_promoted"
    assert t.events[0].evidence == {"override": True} and "alice" in t.events[0].reason


def test_only_a_promotion_changes_what_serves_and_the_override_records_its_actor() -> None:
    promoted = step(started(), at(1), command=cmd("promote", role="admin", reason="hotfix"))
    assert [a for a in promoted.actions if isinstance(a, SetProduction)] == [
        SetProduction(variant="int8", actor="alice", reason=promoted.state.reason)]
    assert promoted.state.serving == "int8"
    for ended in (step(started(), at(1), command=cmd("abort")), step(started(), at(22), ev(Verdict.FAIL))):
        assert not [a for a in ended.actions if isinstance(a, SetProduction)]
        assert ended.state.serving == "fp32" and splits(ended)[0].final


def test_a_rollback_names_a_weight_set_by_hand_not_the_steps_plan() -> None:
    held = step(started(), at(1), command=cmd("set_weight", weight_pct=10))  # still at the shadow step
    t = step(held.state, at(2), ev(Verdict.FAIL))
    assert t.state.phase is Phase.ROLLED_BACK
    assert "candidate held at 10 % by hand" in t.state.reason


def test_abort_returns_all_traffic_to_the_baseline() -> None:
    t = step(step(started(), at(20), ev(Verdict.PASS)).state, at(21), command=cmd("abort"))
    assert t.state.phase is Phase.ABORTED and splits(t) == [PublishSplit({"fp32": 100.0}, None, 1, "fp32", final=True)]


def test_pending_rollout_can_be_paused_aborted_or_promoted_without_being_started() -> None:
    s = RolloutState(rollout_id=7, spec=SPEC)
    p = step(s, T0, command=cmd("pause"))
    assert p.state.phase is Phase.PAUSED and not splits(p)
    assert not step(p.state, at(5), ev(Verdict.FAIL)).changed  # never started: nothing to roll back
    back = step(p.state, at(6), command=cmd("resume")).state
    assert back.phase is Phase.PENDING and step(back, at(7)).state.phase is Phase.SHADOW
    assert not splits(step(s, T0, command=cmd("abort")))


def test_illegal_commands_get_one_clear_conflict() -> None:
    promoted = step(started(), at(1), command=cmd("promote", role="admin")).state
    with pytest.raises(Conflict, match="cannot resume rollout 7: it is promoted; resume applies to paused rollouts"):
        step(promoted, at(2), command=cmd("resume"))
    for kind in COMMANDS:
        with pytest.raises(Conflict, match=f"it is promoted; {kind.replace('_', '-')} applies to"):
            step(promoted, at(2), command=cmd(kind, role="admin", weight_pct=5))
    with pytest.raises(Conflict, match="cannot approve rollout 7: it is shadow"):
        step(started(), at(1), command=cmd("approve"))


def test_bad_commands_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unknown command"):
        step(started(), at(1), command=cmd("explode"))
    with pytest.raises(InvalidInput, match="weight_pct must be a number in"):
        step(started(), at(1), command=cmd("set_weight", weight_pct=101))
    with pytest.raises(Forbidden):
        step(started(), at(1), command=cmd("abort", role="viewer"))
    with pytest.raises(InvalidInput, match="timezone-aware"):
        step(started(), datetime(2025, 1, 1))


def test_every_phase_change_is_in_the_one_table() -> None:
    for phase in Phase:
        assert phase in ALLOWED
        if phase.terminal:
            assert not ALLOWED[phase]


def run(script: list[tuple[float, Evaluation | None, Command | None]]) -> tuple[RolloutState, list[object]]:
    state = RolloutState(rollout_id=3, spec=SPEC)
    log: list[object] = []
    for seconds, evaluation, command in script:
        try:
            t = step(state, at(seconds), evaluation, command)
        except Conflict as exc:
            log.append(str(exc))
            continue
        # Serialise and reload every time, as the reconciler does between ticks.
        state = state_from_dict(3, SPEC, state_to_dict(t.state))
        log.extend(t.actions)
    return state, log


def test_replay_same_events_in_same_state_out() -> None:
    script: list[tuple[float, Evaluation | None, Command | None]] = [
        (0, None, None), (5, ev(Verdict.UNDECIDED), None), (11, ev(Verdict.PASS), None),
        (12, None, cmd("pause")), (13, None, cmd("pause")), (20, None, cmd("set_weight", weight_pct=20)),
        (25, None, cmd("resume")), (40, ev(Verdict.PASS), None), (45, ev(Verdict.UNDECIDED), None),
        (120, ev(Verdict.UNDECIDED), None), (121, ev(Verdict.PASS), None), (122, ev(Verdict.FAIL), None),
    ]
    first, log1 = run(script)
    second, log2 = run(script)
    assert first == second and log1 == log2
    assert first.phase is Phase.PROMOTED
    seqs = [a.seq for a in log1 if isinstance(a, RecordEvent)]
    assert seqs == list(range(1, len(seqs) + 1)) and first.seq == seqs[-1]


def test_a_full_traffic_step_counts_the_candidates_samples_not_the_idle_baseline() -> None:
    spec = RolloutSpec(model="digits", baseline="fp32", candidate="int8",
                       steps=(Step(100, min_duration_s=0, min_samples=50),))
    s = started(spec)
    results = ev(Verdict.PASS).results
    assert not step(s, at(1), Evaluation(results, Verdict.PASS, 0, 49)).changed
    assert step(s, at(1), Evaluation(results, Verdict.PASS, 0, 50)).state.phase is Phase.PROMOTED
