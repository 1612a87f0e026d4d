"""Approval steps and spec changes in the state machine: wait, approve, time out, and what a new spec may change."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from controller.machine import (
    ALLOWED,
    COMMANDS,
    Command,
    Evaluation,
    Notify,
    PublishSplit,
    RolloutState,
    SetProduction,
    Transition,
    changes_refused,
    state_from_dict,
    state_to_dict,
    step,
)
from modelroll.errors import Conflict, Forbidden, InvalidInput
from modelroll.types import (
    NOTIFY_EVENTS,
    ApprovalTimeout,
    Criteria,
    CriterionResult,
    Phase,
    RolloutSpec,
    Step,
    Verdict,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
STEPS = (Step(0, shadow=True, min_duration_s=10, min_samples=5),
         Step(10, min_duration_s=10, min_samples=5, approval=True),
         Step(100, min_duration_s=10, min_samples=5))
SPEC = RolloutSpec(model="digits", baseline="fp32", candidate="int8", steps=STEPS)


def ev(verdict: Verdict, samples: int = 100) -> Evaluation:
    results = tuple(CriterionResult(criterion=n, verdict=verdict, estimate=0.4, ci_low=0.3, ci_high=0.5,
                                    threshold=0.5, baseline_value=10.0, candidate_value=4.0, baseline_n=100,
                                    candidate_n=100, method="test", message=f"{n} {verdict.value}")
                    for n in ("latency_p50", "errors"))
    return Evaluation(results, verdict, samples, samples)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def cmd(kind: str, role: str = "operator", **kw: object) -> Command:
    return Command(kind=kind, actor="alice", role=role, **kw)  # type: ignore[arg-type]


def waiting(spec: RolloutSpec = SPEC) -> RolloutState:
    """Started, through the shadow step, and the approval step's criteria passed: waiting since at(30)."""
    s = step(RolloutState(rollout_id=7, spec=spec), T0).state
    s = step(s, at(11), ev(Verdict.PASS)).state
    assert s.phase is Phase.PROGRESSING and s.step_index == 1
    t = step(s, at(30), ev(Verdict.PASS))
    assert t.state.phase is Phase.WAITING_APPROVAL, t.state
    return t.state


def notifies(t: Transition) -> list[Notify]:
    return [a for a in t.actions if isinstance(a, Notify)]


def test_an_approval_step_waits_once_its_criteria_pass_and_says_so() -> None:
    s = step(RolloutState(rollout_id=7, spec=SPEC), T0).state
    s = step(s, at(11), ev(Verdict.PASS)).state
    assert not step(s, at(15), ev(Verdict.PASS)).changed  # min duration not met: no wait yet
    t = step(s, at(30), ev(Verdict.PASS))
    assert t.state.phase is Phase.WAITING_APPROVAL and t.state.step_index == 1 and t.state.weight_pct == 10
    assert t.state.waiting_since == at(30)
    assert t.events[0].kind == "approval_needed" and t.events[0].evidence["verdict"] == "pass"
    assert "waiting for approval at step 2 of 3: 10 %" in t.state.reason
    assert "modelroll rollout approve 7" in t.state.reason and "it waits until then" in t.state.reason
    assert [n.kind for n in notifies(t)] == ["approval_needed"]
    assert not [a for a in t.actions if isinstance(a, PublishSplit)]  # the split holds at the step's weight
    assert t.state.weights == {"fp32": 90.0, "int8": 10.0}
    # Waiting, it stays: passing evidence alone never goes on.
    assert not step(t.state, at(10_000), ev(Verdict.PASS)).changed


def test_approve_goes_on_to_the_next_step_with_the_operator_and_reason() -> None:
    t = step(waiting(), at(40), command=cmd("approve", reason="dashboards look fine"))
    assert t.state.phase is Phase.PROGRESSING and t.state.step_index == 2 and t.state.weight_pct == 100
    event = t.events[0]
    assert (event.kind, event.actor, event.from_phase, event.to_phase) == (
        "approved", "alice", Phase.WAITING_APPROVAL, Phase.PROGRESSING)
    assert "approved by alice: dashboards look fine" in event.reason
    assert t.state.waiting_since is None and t.state.step_started_at == at(40)
    assert next(a for a in t.actions if isinstance(a, PublishSplit)).weights == {"fp32": 0.0, "int8": 100.0}


def test_approving_the_last_step_promotes_and_makes_the_candidate_serve() -> None:
    spec = RolloutSpec(model="digits", baseline="fp32", candidate="int8",
                       steps=(Step(100, min_duration_s=0, min_samples=1, approval=True),))
    s = step(RolloutState(rollout_id=2, spec=spec), T0).state
    s = step(s, at(1), ev(Verdict.PASS)).state
    assert s.phase is Phase.WAITING_APPROVAL and "go on to the promotion" in s.reason
    t = step(s, at(2), command=cmd("approve", reason="ship it"))
    assert t.state.phase is Phase.PROMOTED
    assert SetProduction(variant="int8", actor="alice", reason=t.state.reason) in t.actions


def test_approve_applies_only_while_waiting_and_names_the_phase() -> None:
    s = step(RolloutState(rollout_id=7, spec=SPEC), T0).state
    with pytest.raises(Conflict, match="cannot approve rollout 7: it is shadow; approve applies to rollouts waiting"):
        step(s, at(1), command=cmd("approve"))
    with pytest.raises(Forbidden, match="approve needs the operator role"):
        step(waiting(), at(40), command=cmd("approve", role="viewer"))


def test_a_failing_criterion_still_rolls_back_while_waiting() -> None:
    t = step(waiting(), at(40), ev(Verdict.FAIL))
    assert t.state.phase is Phase.ROLLED_BACK and t.state.weights == {"fp32": 100.0}


def test_the_approval_timeout_rolls_back_by_default() -> None:
    steps = (Step(10, min_duration_s=0, min_samples=1, approval=True, timeout_s=60), Step(100))
    s = waiting_at_first(steps)
    assert "without an approval within 60 s it rolls back (on_timeout: rollback)" in s.reason
    assert not step(s, at(59), ev(Verdict.UNDECIDED)).changed
    t = step(s, at(61), ev(Verdict.UNDECIDED))
    assert t.state.phase is Phase.ROLLED_BACK and t.events[0].actor == "controller"
    assert "no approval at step 1 of 2: 10 % within 60 s (on_timeout: rollback)" in t.state.reason


def test_the_approval_timeout_with_advance_goes_on_without_one() -> None:
    steps = (Step(10, min_duration_s=0, min_samples=1, approval=True, timeout_s=60,
                  on_timeout=ApprovalTimeout.ADVANCE), Step(100))
    s = waiting_at_first(steps)
    t = step(s, at(61), ev(Verdict.PASS))
    assert t.state.phase is Phase.PROGRESSING and t.state.step_index == 1 and t.events[0].kind == "advanced"
    assert "(on_timeout: advance)" in t.state.reason


def waiting_at_first(steps: tuple[Step, ...]) -> RolloutState:
    spec = RolloutSpec(model="digits", baseline="fp32", candidate="int8", steps=steps)
    s = step(RolloutState(rollout_id=4, spec=spec), T0).state
    s = step(s, at(0), ev(Verdict.PASS)).state
    assert s.phase is Phase.WAITING_APPROVAL and s.waiting_since == at(0)
    return s


def test_pause_while_waiting_resumes_to_waiting_with_a_fresh_approval_window() -> None:
    steps = (Step(10, min_duration_s=0, min_samples=1, approval=True, timeout_s=60), Step(100))
    s = waiting_at_first(steps)
    paused = step(s, at(50), command=cmd("pause")).state
    assert paused.phase is Phase.PAUSED and paused.resume_phase is Phase.WAITING_APPROVAL
    assert not step(paused, at(500), ev(Verdict.PASS)).changed  # paused: no timeout
    back = step(paused, at(600), command=cmd("resume")).state
    assert back.phase is Phase.WAITING_APPROVAL and back.waiting_since == at(600)
    assert not step(back, at(650), ev(Verdict.PASS)).changed
    assert step(back, at(661), ev(Verdict.PASS)).state.phase is Phase.ROLLED_BACK


def test_a_shadow_approval_step_keeps_mirroring_while_waiting() -> None:
    steps = (Step(0, shadow=True, min_duration_s=0, min_samples=1, approval=True), Step(100))
    s = waiting_at_first(steps)
    assert s.shadow == "int8" and s.weights == {"fp32": 100.0, "int8": 0.0}


def test_waiting_survives_a_round_trip_through_the_stored_state() -> None:
    s = waiting()
    assert state_from_dict(7, SPEC, state_to_dict(s)) == s


def test_notifications_go_only_to_the_events_the_spec_names() -> None:
    quiet = replace(SPEC, notify_events=("approval_needed", "promoted"))
    s = step(RolloutState(rollout_id=7, spec=quiet), T0)
    assert not notifies(s)  # started is not asked for
    s2 = step(s.state, at(11), ev(Verdict.PASS))
    assert not notifies(s2)  # advanced neither
    t = step(s2.state, at(30), ev(Verdict.PASS))
    assert [n.kind for n in notifies(t)] == ["approval_needed"]


def test_every_notification_the_machine_sends_is_a_named_event() -> None:
    kinds: set[str] = set()
    for t in (step(waiting(), at(40), command=cmd("approve")), step(waiting(), at(40), ev(Verdict.FAIL)),
              step(waiting(), at(40), command=cmd("abort")), step(waiting(), at(40), command=cmd("pause")),
              step(waiting(), at(40), command=cmd("promote", role="admin")),
              step(RolloutState(rollout_id=1, spec=SPEC), T0)):
        kinds.update(n.kind for n in notifies(t))
    assert kinds <= set(NOTIFY_EVENTS) and "approved" in kinds


def test_the_waiting_phase_is_in_the_tables() -> None:
    assert Phase.WAITING_APPROVAL in ALLOWED and not Phase.WAITING_APPROVAL.terminal
    assert COMMANDS["approve"].phases == frozenset({Phase.WAITING_APPROVAL})
    for kind in ("pause", "set_weight", "promote", "abort", "configure"):
        assert Phase.WAITING_APPROVAL in COMMANDS[kind].phases


# --- configure: a changed spec applied to an unfinished rollout ---------------------------------------------------

def configure(state: RolloutState, spec: RolloutSpec, verdict_seen: bool = False) -> Transition:
    return step(state, at(100), command=cmd("configure", spec=spec, verdict_seen=verdict_seen))


def test_a_pending_rollout_may_change_every_step_and_its_criteria() -> None:
    pending = RolloutState(rollout_id=7, spec=SPEC, seq=1)
    new = replace(SPEC, steps=(Step(5), Step(50, approval=True), Step(100)), criteria=Criteria(alpha=0.01))
    t = configure(pending, new)
    assert t.state.spec == new and t.state.phase is Phase.PENDING
    assert t.events[0].kind == "configured" and set(t.events[0].evidence["changed"]) == {"steps", "criteria"}
    assert not notifies(t) and not [a for a in t.actions if isinstance(a, PublishSplit)]


def test_the_same_spec_changes_nothing() -> None:
    assert not configure(waiting(), SPEC).changed


def test_steps_ahead_may_change_steps_done_or_current_may_not() -> None:
    s = waiting()  # at step 2 of 3
    ahead = replace(SPEC, steps=(*STEPS[:2], Step(50), Step(100)))
    t = configure(s, ahead)
    assert t.state.spec.steps == ahead.steps and t.state.phase is Phase.WAITING_APPROVAL
    current = replace(SPEC, steps=(STEPS[0], Step(20, approval=True), STEPS[2]))
    with pytest.raises(Conflict, match=r"step 2 cannot change: it is current \(the rollout is at step 2 of 3\)"):
        configure(s, current)
    assert changes_refused(s, current, False)[0].field == "spec.steps[1]"
    done = replace(SPEC, steps=(Step(0, shadow=True), *STEPS[1:]))
    assert changes_refused(s, done, False)[0].field == "spec.steps[0]"
    shorter = replace(SPEC, steps=(STEPS[0], Step(100)))
    assert [r.field for r in changes_refused(s, shorter, False)] == ["spec.steps[1]"]


def test_criteria_may_change_only_before_any_verdict() -> None:
    s = waiting()
    new = replace(SPEC, criteria=Criteria(alpha=0.01))
    assert configure(s, new, verdict_seen=False).state.spec.criteria.alpha == 0.01
    with pytest.raises(Conflict, match=r"spec\.criteria cannot change: the statistics have already given a verdict"):
        configure(s, new, verdict_seen=True)


def test_model_candidate_baseline_and_deadline_policy_never_change() -> None:
    s = waiting()
    for field, value in (("candidate", "int4"), ("baseline", "fp16"), ("model", "other")):
        refusals = changes_refused(s, replace(SPEC, **{field: value}), False)
        assert [r.field for r in refusals] == [f"spec.{field}"], refusals
    with pytest.raises(Conflict, match=r"spec\.on_deadline cannot change"):
        configure(s, replace(SPEC, on_deadline="rollback"))  # type: ignore[arg-type]


def test_a_finished_rollout_takes_no_change() -> None:
    promoted = step(waiting(), at(40), command=cmd("promote", role="admin")).state
    with pytest.raises(Conflict, match="it is promoted; configure applies to rollouts that are not finished"):
        configure(promoted, replace(SPEC, criteria=Criteria(alpha=0.01)))
    assert changes_refused(promoted, SPEC, False)[0].field == "spec"


def test_configure_without_a_spec_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="configure needs the new spec"):
        step(waiting(), at(40), command=cmd("configure"))
