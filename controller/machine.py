"""The rollout state machine: pure, `step(state, now, evaluation, command)` → new state + actions.

No I/O and no clock: the reconciler and the API feed it and apply what it returns, so the same
inputs always give the same state (the replay test holds it to that).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from modelroll.errors import Conflict, Forbidden, InvalidInput
from modelroll.types import ApprovalTimeout, CriterionResult, DeadlinePolicy, Phase, RolloutSpec, Verdict

ROLES = ("viewer", "operator", "admin")

# Every phase change the machine may make; anything else is a bug and raises.
ALLOWED: Mapping[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.PENDING, Phase.SHADOW, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTED,
                              Phase.ABORTED}),
    Phase.SHADOW: frozenset({Phase.SHADOW, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTED,
                             Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED, Phase.WAITING_APPROVAL}),
    Phase.PROGRESSING: frozenset({Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTED,
                                  Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED, Phase.WAITING_APPROVAL}),
    Phase.PAUSED: frozenset({Phase.PENDING, Phase.SHADOW, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTED,
                             Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED, Phase.WAITING_APPROVAL}),
    # An approval step's criteria passed: approve goes on (next step or promotion), a failing criterion or the
    # step's timeout (policy rollback) rolls back, pause and set-weight hold it, promote and abort end it.
    Phase.WAITING_APPROVAL: frozenset({Phase.WAITING_APPROVAL, Phase.SHADOW, Phase.PROGRESSING, Phase.PAUSED,
                                       Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED}),
    Phase.PROMOTED: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
    Phase.ABORTED: frozenset(),
    Phase.FAILED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class CommandRule:
    phases: frozenset[Phase]
    role: str
    applies_to: str
    already: frozenset[Phase] = frozenset()  # phases where the command has nothing to do: no change, no error


# The manual commands: which phases each applies to and the least role it needs.
_UNFINISHED = frozenset({Phase.PENDING, Phase.SHADOW, Phase.PROGRESSING, Phase.PAUSED, Phase.WAITING_APPROVAL})

COMMANDS: Mapping[str, CommandRule] = {
    "pause": CommandRule(frozenset({Phase.PENDING, Phase.SHADOW, Phase.PROGRESSING, Phase.WAITING_APPROVAL}),
                         "operator", "pending, shadow, progressing or waiting_approval rollouts",
                         already=frozenset({Phase.PAUSED})),
    "resume": CommandRule(frozenset({Phase.PAUSED}), "operator", "paused rollouts",
                          already=frozenset({Phase.PENDING, Phase.SHADOW, Phase.PROGRESSING, Phase.WAITING_APPROVAL})),
    "set_weight": CommandRule(frozenset({Phase.SHADOW, Phase.PROGRESSING, Phase.PAUSED, Phase.WAITING_APPROVAL}),
                              "operator", "shadow, progressing, paused or waiting_approval rollouts"),
    "promote": CommandRule(_UNFINISHED, "admin", "rollouts that are not finished"),
    "abort": CommandRule(_UNFINISHED, "operator", "rollouts that are not finished"),
    # Approve: an approval step's criteria passed and it waits; the rollout goes on to the next step (or promotes).
    "approve": CommandRule(frozenset({Phase.WAITING_APPROVAL}), "operator", "rollouts waiting for approval"),
    # Configure: a changed spec applied to an unfinished rollout; changes_refused() says what may not change.
    "configure": CommandRule(_UNFINISHED, "operator", "rollouts that are not finished"),
}


@dataclass(frozen=True, slots=True)
class AutoRule:
    """What the machine does by itself on a signal from the routers, in which phases, and its event's kind."""

    to: Phase
    kind: str
    phases: frozenset[Phase]


# Signals that end or hold a rollout whatever its statistics say. "cannot_serve": a router reports that the
# candidate cannot serve (its artifact failed the integrity check, it cannot be loaded): no evidence can come,
# so the rollout fails at once, paused or not, and production stays what served before.
AUTOMATIC: Mapping[str, AutoRule] = {
    "cannot_serve": AutoRule(Phase.FAILED, "failed", frozenset({Phase.SHADOW, Phase.PROGRESSING, Phase.PAUSED,
                                                                Phase.WAITING_APPROVAL})),
}


@dataclass(frozen=True, slots=True)
class Command:
    """A manual action from the API: kind is one of COMMANDS."""

    kind: str
    actor: str
    role: str
    reason: str = ""
    weight_pct: float | None = None
    spec: RolloutSpec | None = None  # configure: the new spec
    verdict_seen: bool = False  # configure: the statistics have said pass or fail at some look (criteria frozen)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What the statistics said at this look, and how many samples each arm has in the current step."""

    results: tuple[CriterionResult, ...]
    verdict: Verdict
    step_samples_baseline: int = 0
    step_samples_candidate: int = 0
    candidate_cannot_serve: str = ""  # why a router cannot serve the candidate ("" = no such report)

    @property
    def step_samples(self) -> int:
        """The candidate's requests in this step (shadow calls included): its exposure at this step's weight.

        Not the smaller arm: at 100 % the baseline gets no traffic at all.
        """
        return self.step_samples_candidate


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Everything the machine needs about one rollout; `seq` counts the events recorded so far."""

    rollout_id: int
    spec: RolloutSpec
    phase: Phase = Phase.PENDING
    step_index: int = 0
    weight_pct: float = 0.0
    started_at: datetime | None = None
    step_started_at: datetime | None = None
    hold: str = ""  # "" | "paused" | "manual" (set-weight) while phase is paused
    resume_phase: Phase | None = None
    deadline_noted: bool = False
    seq: int = 0
    reason: str = ""
    waiting_since: datetime | None = None  # when the current approval step began to wait

    @property
    def weights(self) -> dict[str, float]:
        if self.phase is Phase.PROMOTED:
            return {self.spec.candidate: 100.0}
        if self.started_at is None or self.phase in (Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED):
            return {self.spec.baseline: 100.0}
        return {self.spec.baseline: 100.0 - self.weight_pct, self.spec.candidate: self.weight_pct}

    @property
    def serving(self) -> str:
        """The variant that answers when another fails: the production variant (the candidate once promoted)."""
        return self.spec.candidate if self.phase is Phase.PROMOTED else self.spec.baseline

    @property
    def shadow(self) -> str | None:
        live = self.phase in (Phase.SHADOW, Phase.PAUSED, Phase.WAITING_APPROVAL) and self.started_at is not None
        step = self.spec.steps[self.step_index]
        return self.spec.candidate if live and step.shadow and self.weight_pct == 0 else None


@dataclass(frozen=True, slots=True)
class PublishSplit:
    """The split routers must follow; `final`: the rollout is over and `baseline` alone serves, as production."""

    weights: dict[str, float]
    shadow: str | None
    step: int
    baseline: str
    final: bool = False


@dataclass(frozen=True, slots=True)
class SetProduction:
    """Make `variant` the model's production variant, in the transaction that records the promotion."""

    variant: str
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecordEvent:
    seq: int
    kind: str
    actor: str
    reason: str
    from_phase: Phase
    to_phase: Phase
    step_index: int
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notify:
    kind: str
    text: str


Action = PublishSplit | RecordEvent | Notify | SetProduction


@dataclass(frozen=True, slots=True)
class Transition:
    state: RolloutState
    actions: tuple[Action, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    @property
    def events(self) -> list[RecordEvent]:
        return [a for a in self.actions if isinstance(a, RecordEvent)]


CONTROLLER = "controller"


def result_to_dict(result: CriterionResult) -> dict[str, Any]:
    return {name: (getattr(result, name).value if name == "verdict" else getattr(result, name))
            for name in CriterionResult.__dataclass_fields__}


def _evidence(evaluation: Evaluation | None) -> dict[str, Any]:
    if evaluation is None:
        return {}
    out: dict[str, Any] = {
        "verdict": evaluation.verdict.value,
        "results": [result_to_dict(r) for r in evaluation.results],
        "step_samples": {"baseline": evaluation.step_samples_baseline,
                         "candidate": evaluation.step_samples_candidate},
    }
    if evaluation.candidate_cannot_serve:
        out["cannot_serve"] = {"candidate": evaluation.candidate_cannot_serve}
    return out


def _move(state: RolloutState, to: Phase, *, kind: str, actor: str, reason: str, now: datetime,
          evidence: dict[str, Any] | None = None, notify: bool = True, **changes: Any) -> Transition:
    """Apply one transition: the new state, its event, its split and (on phase changes) a notification."""
    if to not in ALLOWED[state.phase]:
        raise Conflict(f"rollout {state.rollout_id} cannot go from {state.phase.value} to {to.value}")
    new = replace(state, phase=to, seq=state.seq + 1, reason=reason, **changes)
    actions: list[Action] = [RecordEvent(
        seq=new.seq, kind=kind, actor=actor, reason=reason, from_phase=state.phase, to_phase=to,
        step_index=new.step_index, evidence=evidence or {},
    )]
    if (new.weights, new.shadow, new.step_index) != (state.weights, state.shadow, state.step_index) \
            or (state.started_at is None and new.started_at is not None):
        actions.append(PublishSplit(weights=new.weights, shadow=new.shadow, step=new.step_index,
                                    baseline=new.serving, final=to.terminal))
    if to is Phase.PROMOTED:
        actions.append(SetProduction(variant=state.spec.candidate, actor=actor, reason=reason))
    if notify and (to is not state.phase or kind in ("advanced", "deadline")) and kind in state.spec.notify_events:
        actions.append(Notify(kind=kind, text=f"rollout {state.rollout_id} of {state.spec.model} "
                                              f"({state.spec.candidate} vs {state.spec.baseline}): {reason}"))
    return Transition(new, tuple(actions))


def _enter_step(index: int, spec: RolloutSpec) -> tuple[Phase, float]:
    step = spec.steps[index]
    return (Phase.SHADOW if step.shadow else Phase.PROGRESSING), step.weight_pct


def _describe_step(spec: RolloutSpec, index: int) -> str:
    step = spec.steps[index]
    what = "shadow (0 % served, mirrored)" if step.shadow else f"{step.weight_pct:g} %"
    return f"step {index + 1} of {len(spec.steps)}: {what}"


def _describe_state(state: RolloutState) -> str:
    """Where the rollout is, as served: a weight set by hand is named, never hidden behind the step's plan."""
    planned = state.spec.steps[state.step_index]
    where = _describe_step(state.spec, state.step_index)
    if state.started_at is not None and state.weight_pct != planned.weight_pct:
        where += f", candidate held at {state.weight_pct:g} % by hand"
    return where


def step(state: RolloutState, now: datetime, evaluation: Evaluation | None = None,
         command: Command | None = None) -> Transition:
    """The one entry point: a command if given, else the automatic decision at `now`."""
    if now.tzinfo is None:
        raise InvalidInput("now must be timezone-aware UTC")
    if command is not None:
        return _apply_command(state, now, command)
    return _decide(state, now, evaluation)


def _decide(state: RolloutState, now: datetime, evaluation: Evaluation | None) -> Transition:
    spec = state.spec
    if state.phase.terminal or (state.phase is Phase.PAUSED and state.started_at is None):
        return Transition(state)
    if state.phase is Phase.PENDING:
        phase, weight = _enter_step(0, spec)
        return _move(state, phase, kind="started", actor=CONTROLLER, now=now,
                     reason=f"started at {_describe_step(spec, 0)}", weight_pct=weight,
                     started_at=now, step_started_at=now, step_index=0)
    if evaluation is None:
        return Transition(state)
    rule = AUTOMATIC["cannot_serve"]
    if evaluation.candidate_cannot_serve and state.phase in rule.phases:
        return _move(state, rule.to, kind=rule.kind, actor=CONTROLLER, now=now,
                     reason=f"{rule.to.value} at {_describe_state(state)}: candidate {spec.candidate!r} cannot serve "
                            f"({evaluation.candidate_cannot_serve}); {spec.baseline!r} serves all traffic",
                     evidence=_evidence(evaluation), hold="", resume_phase=None)
    # A pause holds the schedule, not the safety net: a failing criterion still rolls back.
    if evaluation.verdict is Verdict.FAIL:
        failing = [r for r in evaluation.results if r.verdict is Verdict.FAIL]
        because = "; ".join(f"{r.criterion}: {r.message}" for r in failing) or "a criterion failed"
        return _move(state, Phase.ROLLED_BACK, kind="rolled_back", actor=CONTROLLER, now=now,
                     reason=f"rolled back at {_describe_state(state)}: {because}",
                     evidence=_evidence(evaluation), hold="", resume_phase=None)
    if state.phase is Phase.PAUSED:
        return Transition(state)
    if state.phase is Phase.WAITING_APPROVAL:
        return _await_approval(state, now, evaluation)
    current = spec.steps[state.step_index]
    started = state.step_started_at or now
    elapsed_s = (now - started).total_seconds()
    if (evaluation.verdict is Verdict.PASS and elapsed_s >= current.min_duration_s
            and evaluation.step_samples >= current.min_samples):
        because = (f"every criterion passes after {elapsed_s:.0f} s and {evaluation.step_samples} candidate "
                   "samples in the step")
        if current.approval:
            return _move(state, Phase.WAITING_APPROVAL, kind="approval_needed", actor=CONTROLLER, now=now,
                         reason=f"waiting for approval at {_describe_state(state)}: {because}; "
                                f"{_approval_terms(state)}",
                         evidence=_evidence(evaluation), waiting_since=now)
        return _go_on(state, now, actor=CONTROLLER, kind="", why=because, evidence=_evidence(evaluation))
    if current.max_duration_s is not None and elapsed_s >= current.max_duration_s:
        return _deadline(state, now, evaluation, elapsed_s)
    return Transition(state)


def _next_words(state: RolloutState) -> str:
    nxt = state.step_index + 1
    return "the promotion" if nxt >= len(state.spec.steps) else _describe_step(state.spec, nxt)


def _approval_terms(state: RolloutState) -> str:
    """What an operator does at an approval step, and what happens if nobody does."""
    current = state.spec.steps[state.step_index]
    terms = (f"approve (`modelroll rollout approve {state.rollout_id} --reason ...`) to go on to "
             f"{_next_words(state)}")
    if current.timeout_s is None:
        return terms + "; it waits until then"
    then = "rolls back" if current.on_timeout is ApprovalTimeout.ROLLBACK else f"goes on to {_next_words(state)}"
    return terms + f"; without an approval within {current.timeout_s:g} s it {then} (on_timeout: " \
                   f"{current.on_timeout.value})"


def _go_on(state: RolloutState, now: datetime, *, actor: str, kind: str, why: str,
           evidence: dict[str, Any]) -> Transition:
    """The step is done: the next step, or the promotion after the last. `kind` "" records advanced/promoted."""
    spec = state.spec
    if state.step_index + 1 >= len(spec.steps):
        return _move(state, Phase.PROMOTED, kind=kind or "promoted", actor=actor, now=now,
                     reason=f"promoted at {_describe_state(state)}: {why}", evidence=evidence,
                     hold="", resume_phase=None, waiting_since=None)
    nxt = state.step_index + 1
    phase, weight = _enter_step(nxt, spec)
    return _move(state, phase, kind=kind or "advanced", actor=actor, now=now,
                 reason=f"advanced to {_describe_step(spec, nxt)}: {why}", evidence=evidence, step_index=nxt,
                 weight_pct=weight, step_started_at=now, deadline_noted=False, waiting_since=None)


def _await_approval(state: RolloutState, now: datetime, evaluation: Evaluation) -> Transition:
    """Waiting at an approval step: nothing changes until an operator approves or the step's timeout passes."""
    current = state.spec.steps[state.step_index]
    since = state.waiting_since or state.step_started_at or now
    waited_s = (now - since).total_seconds()
    if current.timeout_s is None or waited_s < current.timeout_s:
        return Transition(state)
    missed = f"no approval at {_describe_state(state)} within {current.timeout_s:g} s"
    if current.on_timeout is ApprovalTimeout.ROLLBACK:
        return _move(state, Phase.ROLLED_BACK, kind="rolled_back", actor=CONTROLLER, now=now,
                     reason=f"rolled back by policy: {missed} (on_timeout: rollback)",
                     evidence=_evidence(evaluation), waiting_since=None)
    return _go_on(state, now, actor=CONTROLLER, kind="",
                  why=f"{missed}, and the step goes on without one (on_timeout: advance)",
                  evidence=_evidence(evaluation))


def _deadline(state: RolloutState, now: datetime, evaluation: Evaluation, elapsed_s: float) -> Transition:
    spec = state.spec
    pending = [r for r in evaluation.results if r.verdict is not Verdict.PASS]
    why = "; ".join(f"{r.criterion}: {r.message}" for r in pending) or (
        f"{evaluation.step_samples} of {spec.steps[state.step_index].min_samples} candidate samples in the step")
    base = f"{_describe_state(state)} reached its deadline after {elapsed_s:.0f} s undecided ({why})"
    if spec.on_deadline is DeadlinePolicy.ROLLBACK:
        return _move(state, Phase.ROLLED_BACK, kind="rolled_back", actor=CONTROLLER, now=now,
                     reason=f"rolled back by policy: {base}", evidence=_evidence(evaluation))
    if state.deadline_noted:
        return Transition(state)
    return _move(state, state.phase, kind="deadline", actor=CONTROLLER, now=now,
                 reason=f"holding, never promoting on undecided: {base}; resume waits for a verdict, "
                        "or promote/abort by hand", evidence=_evidence(evaluation), deadline_noted=True)


def _apply_command(state: RolloutState, now: datetime, command: Command) -> Transition:
    rule = COMMANDS.get(command.kind)
    if rule is None:
        raise InvalidInput(f"unknown command {command.kind!r}; accepted: {sorted(COMMANDS)}")
    if command.role not in ROLES:
        raise InvalidInput(f"unknown role {command.role!r}; accepted: {list(ROLES)}")
    verb = command.kind.replace("_", "-")
    if ROLES.index(command.role) < ROLES.index(rule.role):
        raise Forbidden(f"{verb} needs the {rule.role} role; {command.actor} is {command.role}")
    if state.phase in rule.already:
        return Transition(state)  # e.g. pausing a paused rollout: nothing to do, nothing recorded
    if state.phase not in rule.phases:
        raise Conflict(f"cannot {verb} rollout {state.rollout_id}: it is {state.phase.value}; "
                       f"{verb} applies to {rule.applies_to}")
    who = f" by {command.actor}" + (f": {command.reason}" if command.reason else "")
    spec = state.spec
    if command.kind == "approve":
        return _go_on(state, now, actor=command.actor, kind="approved",
                      why=f"approved{who}", evidence={"approval": {"step_index": state.step_index,
                                                                   "waiting_since": _iso(state.waiting_since)}})
    if command.kind == "configure":
        return _configure(state, now, command, who)
    if command.kind == "pause":
        resume = state.resume_phase if state.phase is Phase.PAUSED else state.phase
        return _move(state, Phase.PAUSED, kind="paused", actor=command.actor, now=now,
                     reason=f"paused at {_describe_state(state)}{who}",
                     hold="paused", resume_phase=resume)
    if command.kind == "resume":
        back = state.resume_phase or Phase.PENDING
        planned = spec.steps[state.step_index].weight_pct if back is not Phase.PENDING else 0.0
        weight, rule_text = _resumed_weight(state, planned)
        return _move(state, back, kind="resumed", actor=command.actor, now=now,
                     reason=f"resumed at {_describe_step(spec, state.step_index)}{rule_text}{who}",
                     hold="", resume_phase=None, weight_pct=weight, step_started_at=now, deadline_noted=False,
                     waiting_since=now if back is Phase.WAITING_APPROVAL else None)
    if command.kind == "set_weight":
        weight = _check_weight(command.weight_pct)
        resume = state.resume_phase if state.phase is Phase.PAUSED else state.phase
        return _move(state, Phase.PAUSED, kind="weight_set", actor=command.actor, now=now,
                     reason=f"candidate weight set to {weight:g} %{who}; the schedule holds until resume",
                     hold="manual", resume_phase=resume, weight_pct=weight)
    if command.kind == "promote":
        return _move(state, Phase.PROMOTED, kind="override_promoted", actor=command.actor, now=now,
                     reason=f"promoted by hand (override){who}", evidence={"override": True},
                     hold="", resume_phase=None)
    return _move(state, Phase.ABORTED, kind="aborted", actor=command.actor, now=now,
                 reason=f"aborted{who}", hold="", resume_phase=None)


def _resumed_weight(state: RolloutState, planned: float) -> tuple[float, str]:
    """A weight set by hand is kept on resume unless the step's own weight is higher; the reason says which."""
    if state.hold != "manual" or state.started_at is None or state.weight_pct == planned:
        return planned, ""
    if state.weight_pct > planned:
        return state.weight_pct, f", keeping the {state.weight_pct:g} % set by hand (above the step's {planned:g} %)"
    return planned, f", at the step's {planned:g} % (higher than the {state.weight_pct:g} % set by hand)"


@dataclass(frozen=True, slots=True)
class Refusal:
    """One part of a new spec that may not change on a rollout in its current state: the field and why."""

    field: str
    message: str


def changes_refused(state: RolloutState, new: RolloutSpec, verdict_seen: bool) -> list[Refusal]:
    """What a new spec may not change on this rollout: its model, baseline, candidate and deadline policy never,
    steps already done or current never (steps ahead may), criteria once the statistics gave a verdict."""
    old = state.spec
    refused: list[Refusal] = []
    if state.phase.terminal:
        return [Refusal("spec", f"rollout {state.rollout_id} is {state.phase.value}: a finished rollout does not "
                                "change; to roll out again, apply the document under a new metadata.name")]
    for name in ("model", "baseline", "candidate", "on_deadline"):
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            refused.append(Refusal(f"spec.{name}", f"spec.{name} cannot change on a rollout that has begun: it is "
                                                   f"{str(before)!r}, the document says {str(after)!r}"))
    fixed = state.step_index + 1 if state.started_at is not None else 0  # steps done, and the current one
    for index in range(fixed):
        if index >= len(new.steps) or new.steps[index] != old.steps[index]:
            where = "current" if index == state.step_index else "done"
            refused.append(Refusal(f"spec.steps[{index}]" if index < len(new.steps) else "spec.steps",
                                   f"step {index + 1} cannot change: it is {where} (the rollout is at step "
                                   f"{state.step_index + 1} of {len(old.steps)}); only the steps after it may"))
            break
    if new.criteria != old.criteria and verdict_seen:
        refused.append(Refusal("spec.criteria", "spec.criteria cannot change: the statistics have already given a "
                                                "verdict on this rollout; criteria may change only before any verdict"))
    return refused


def _configure(state: RolloutState, now: datetime, command: Command, who: str) -> Transition:
    new = command.spec
    if new is None:
        raise InvalidInput("configure needs the new spec")
    refused = changes_refused(state, new, command.verdict_seen)
    if refused:
        raise Conflict(f"rollout {state.rollout_id}: " + "; ".join(r.message for r in refused))
    old_dict, new_dict = state.spec.to_dict(), new.to_dict()
    changed = [name for name in new_dict if new_dict[name] != old_dict[name]]
    if not changed:
        return Transition(state)
    evidence = {"changed": {name: {"before": old_dict[name], "after": new_dict[name]} for name in changed}}
    return _move(state, state.phase, kind="configured", actor=command.actor, now=now, notify=False,
                 reason=f"spec changed ({', '.join(changed)}){who}", evidence=evidence, spec=new)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _check_weight(value: float | None) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
            or not 0 <= value <= 100:
        raise InvalidInput(f"weight_pct must be a number in [0, 100], got {value!r}")
    return float(value)


def state_to_dict(state: RolloutState) -> dict[str, Any]:
    """The JSON kept in rollouts.state (the spec lives in its own column)."""
    return {
        "phase": state.phase.value, "step_index": state.step_index, "weight_pct": state.weight_pct,
        "started_at": _iso(state.started_at), "step_started_at": _iso(state.step_started_at),
        "hold": state.hold, "resume_phase": state.resume_phase.value if state.resume_phase else None,
        "deadline_noted": state.deadline_noted, "seq": state.seq, "reason": state.reason,
        "waiting_since": _iso(state.waiting_since),
    }


def state_from_dict(rollout_id: int, spec: RolloutSpec, data: Mapping[str, Any]) -> RolloutState:
    def ts(value: Any) -> datetime | None:
        return datetime.fromisoformat(value) if value else None
    if not data:
        return RolloutState(rollout_id=rollout_id, spec=spec)
    resume = data.get("resume_phase")
    return RolloutState(
        rollout_id=rollout_id, spec=spec, phase=Phase(data["phase"]), step_index=int(data["step_index"]),
        weight_pct=float(data["weight_pct"]), started_at=ts(data.get("started_at")),
        step_started_at=ts(data.get("step_started_at")), hold=str(data.get("hold", "")),
        resume_phase=Phase(resume) if resume else None, deadline_noted=bool(data.get("deadline_noted")),
        seq=int(data.get("seq", 0)), reason=str(data.get("reason", "")),
        waiting_since=ts(data.get("waiting_since")),
    )

