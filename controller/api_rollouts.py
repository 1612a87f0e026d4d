"""Rollout endpoints: create (fully validated), read, list, the manual commands (If-Match, 409 on conflict), events.

A manual command runs through the same state machine as the reconciler, in one transaction with the version
check; the reconciler then starts from the new state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from controller.api import (
    IF_MATCH_DOC,
    MAX_ID,
    NAME_DOC,
    Admin,
    ApiContext,
    Ctx,
    Operator,
    SafeStr,
    Viewer,
    etag,
    if_match,
    rollout_json,
)
from controller.auth import Principal
from controller.machine import Command, RolloutState, state_to_dict, step
from controller.transitions import apply_after_commit, audit, enqueue_notifications, state_of, summary, write
from modelroll import production
from modelroll.catalog import newest_report
from modelroll.db import ModelRow, RolloutEventRow, RolloutRow, VariantRow
from modelroll.errors import Conflict, InvalidInput, NotFound
from modelroll.types import (
    CRITERIA_ALIASES,
    NOTIFY_EVENTS,
    TERMINAL_PHASES,
    Phase,
    RolloutSpec,
    canonical_criteria,
    check_name,
)

router = APIRouter(tags=["rollouts"])

RolloutId = Annotated[int, Path(ge=1, le=MAX_ID, description="Rollout id.")]


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight_pct: float = Field(ge=0, le=100, description="Candidate share of traffic; 0 only for a shadow step.")
    shadow: bool = False
    min_duration_s: float = Field(default=60.0, ge=0, le=30 * 86400)
    min_samples: int = Field(default=200, ge=0, le=10**9)
    max_duration_s: float | None = Field(default=None, ge=0, le=365 * 86400)
    approval: bool = Field(default=False, description=(
        "Once this step's criteria pass, wait for an operator's approval before the next step (or the promotion)."))
    timeout_s: float | None = Field(default=None, gt=0, le=365 * 86400, description=(
        "Approval steps: how long to wait for the approval; none: until someone approves or aborts."))
    on_timeout: Literal["rollback", "advance"] = Field(default="rollback", description=(
        "Approval steps: at the timeout, roll back or go on as if approved."))


class CriteriaIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"description": (
        "Also accepted under their short names: "
        + ", ".join(f"{short} ({name})" for short, name in CRITERIA_ALIASES.items()))})

    @model_validator(mode="before")
    @classmethod
    def _short_names(cls, data: Any) -> Any:
        return canonical_criteria(data) if isinstance(data, dict) else data

    latency_reduction_min: float | None = Field(default=None, ge=0, lt=1)
    memory_reduction_min: float | None = Field(default=None, ge=0, lt=1)
    accuracy_drop_max: float | None = Field(default=None, ge=0, le=1)
    error_rate_tolerance: float | None = Field(default=None, ge=0, le=1)
    alpha: float | None = Field(default=None, ge=1e-6, le=0.5)
    min_samples: int | None = Field(default=None, ge=1, le=10**9)
    memory_source: Literal["live", "offline"] | None = Field(
        default=None, description="live (default): gate memory on the routers' exact readings; offline: on the "
        "optimizer's figures, for routers whose runner cannot measure a variant's own memory (inline, remote).")


class NotificationsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Literal[NOTIFY_EVENTS]] = Field(  # type: ignore[valid-type]
        max_length=len(NOTIFY_EVENTS), description="The rollout's events that post to the controller's webhook "
        "(MODELROLL_WEBHOOK_URL); default: all of them.")


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "model": "digits", "candidate": "int8",
        "steps": [{"weight_pct": 0, "shadow": True}, {"weight_pct": 5}, {"weight_pct": 100}]}})
    model: SafeStr = Field(max_length=63, json_schema_extra=NAME_DOC)
    baseline: SafeStr | None = Field(default=None, max_length=63, json_schema_extra=NAME_DOC, description=(
        "The variant that serves now (the model's production variant); omit it to use that. Any other is refused: "
        "a rollout starts from what serves."))
    candidate: SafeStr = Field(max_length=63, json_schema_extra=NAME_DOC)
    force: bool = Field(default=False, description=(
        "Roll out a candidate whose offline report failed a gate, or that has no report; recorded with the actor."))
    steps: list[StepIn] | None = Field(default=None, min_length=1, max_length=100)
    criteria: CriteriaIn | None = None
    on_deadline: Literal["hold", "rollback"] = "hold"
    notifications: NotificationsIn | None = None


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: SafeStr = Field(default="", max_length=1000, description="Why; recorded in the event and the audit.")


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: SafeStr = Field(min_length=1, max_length=1000, description="Why it may go on; recorded with your name.")


class WeightIn(ReasonIn):
    weight_pct: float = Field(ge=0, le=100, description="Candidate share of traffic, held until resume.")


def _spec(body: RolloutIn, baseline: str) -> RolloutSpec:
    data: dict[str, Any] = {"model": body.model, "baseline": baseline, "candidate": body.candidate,
                            "on_deadline": body.on_deadline}
    if body.steps is not None:
        data["steps"] = [s.model_dump() for s in body.steps]
    if body.criteria is not None:
        data["criteria"] = body.criteria.model_dump(exclude_none=True)
    if body.notifications is not None:
        data["notifications"] = body.notifications.model_dump()
    return RolloutSpec.from_dict(data)


def _variant(session: Session, model: ModelRow, name: str, what: str) -> VariantRow:
    row = session.scalars(select(VariantRow).where(VariantRow.model_id == model.id, VariantRow.name == name)).first()
    if row is None:
        known = sorted(session.scalars(select(VariantRow.name).where(VariantRow.model_id == model.id)))
        raise NotFound(f"{what} {name!r} is not a variant of model {model.name!r}; its variants: {known}")
    return row


def _baseline(session: Session, model: ModelRow, asked: str | None) -> VariantRow:
    """What serves the model now; a rollout may name no other baseline (no silent redirect of traffic)."""
    found = production.current_row(session, model.id)
    if found is None:
        raise Conflict(f"model {model.name!r} has no production variant to roll out against")
    revision, serving = found
    if asked is not None and asked != serving.name:
        _variant(session, model, asked, "baseline")  # an unknown name is a 404 with the known ones
        raise Conflict(
            f"rollouts start from what serves: model {model.name!r} is served by {serving.name!r} (revision "
            f"{revision.revision}), not {asked!r}; omit --baseline (or name {serving.name!r}), or first make "
            f"{asked!r} serve with `modelroll models rollback {model.name} --to {asked}`")
    return serving


def _offline_verdict(session: Session, candidate: VariantRow) -> dict[str, Any]:
    """The optimizer's verdict on the candidate: passed, the gates it failed, or no report at all."""
    report = newest_report(session, candidate.id)
    if report is None:
        return {"report": None, "passed": None, "failed_gates": []}
    failed = sorted(name for name, gate in (report.gates or {}).items()
                    if isinstance(gate, dict) and not gate.get("passed"))
    return {"report": report.id, "job": report.job_id, "passed": bool(report.passed), "failed_gates": failed}


def _check_offline(model: str, candidate: str, offline: dict[str, Any], force: bool) -> None:
    if offline["passed"] or force:
        return
    why = ("has no offline report (it was not built and measured by the optimizer)" if offline["report"] is None
           else f"failed its offline gates ({', '.join(offline['failed_gates']) or 'see its report'}) in "
                f"optimization job {offline['job']}")
    raise Conflict(f"candidate {candidate!r} of model {model!r} {why}: roll it out anyway with force "
                   "(`rollout create --force`), which is recorded with your name")


@router.post("/rollouts", status_code=201, summary="Create a rollout (starts pending; the controller starts it)")
def create_rollout(body: RolloutIn, ctx: Ctx, who: Operator, response: Response) -> dict[str, Any]:
    with ctx.session_factory() as session, session.begin():
        out = rollout_json(insert_rollout(session, who, body))
    response.headers.update(etag(out["version"]))
    return out


def insert_rollout(session: Session, who: Principal, body: RolloutIn, name: str | None = None) -> RolloutRow:
    """Check and record a new pending rollout (with its created event and audit entry) in the caller's transaction;
    `name`: the metadata.name of the document that asks for it."""
    for kind, value in (("model", body.model), ("candidate", body.candidate), ("baseline", body.baseline)):
        if value is not None:
            check_name(kind, value)  # a malformed name is a 400 before any lookup
    model = session.scalars(select(ModelRow).where(ModelRow.name == body.model)
                                .with_for_update(key_share=True)).first()
    if model is None:
        known = sorted(session.scalars(select(ModelRow.name)))
        raise NotFound(f"model {body.model!r} is not registered; registered models: {known}")
    baseline = _baseline(session, model, body.baseline)
    candidate = _variant(session, model, body.candidate, "candidate")
    if candidate.id == baseline.id:
        raise InvalidInput(f"baseline and candidate must differ: {candidate.name!r} already serves model "
                           f"{model.name!r}; pick another candidate")
    if candidate.retired_at is not None:
        raise Conflict(f"candidate {candidate.name!r} of model {model.name!r} is retired and cannot serve")
    spec = _spec(body, baseline.name)
    offline = _offline_verdict(session, candidate)
    _check_offline(model.name, candidate.name, offline, body.force)
    active = production.active_rollout(session, model.id)
    if active is not None:
        raise Conflict(f"model {spec.model!r} already has an active rollout {active.id} ({active.phase}): "
                       "abort it or let it finish before creating another")
    forced = body.force and not offline["passed"]
    reason = f"created by {who.actor}" + (" (forced past the offline verdict)" if forced else "")
    state = RolloutState(rollout_id=0, spec=spec, seq=1, reason=reason)
    row = RolloutRow(model_id=model.id, baseline_variant_id=baseline.id, candidate_variant_id=candidate.id,
                     spec=spec.to_dict(), phase=Phase.PENDING.value, step_index=0, weights=state.weights,
                     state=state_to_dict(state), last_reason=state.reason, created_by=who.actor, evaluation={},
                     name=name)
    session.add(row)
    session.flush()
    session.add(RolloutEventRow(rollout_id=row.id, seq=1, kind="created", actor=who.actor, reason=state.reason,
                                from_phase="", to_phase=Phase.PENDING.value, step_index=0,
                                evidence={"spec": spec.to_dict(), "offline": offline, "forced": forced}))
    audit(session, who.actor, "rollout.create", "rollout", row.id, {},
          {**summary(row), "offline": offline, "forced": forced, "name": name})
    session.flush()
    return row


@router.get("/rollouts", summary="List rollouts, newest first")
def list_rollouts(ctx: Ctx, _: Viewer,
                  model: Annotated[SafeStr | None, Query(max_length=63)] = None,
                  phase: Annotated[Phase | None, Query()] = None,
                  active: Annotated[bool | None, Query(description="Only unfinished (true) or finished (false).")]
                  = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    query = select(RolloutRow).order_by(RolloutRow.id.desc()).limit(limit)
    if phase is not None:
        query = query.where(RolloutRow.phase == phase.value)
    if active is not None:
        terminal = [p.value for p in TERMINAL_PHASES]
        query = query.where(RolloutRow.phase.not_in(terminal) if active else RolloutRow.phase.in_(terminal))
    with ctx.session_factory() as session:
        if model is not None:
            query = query.join(ModelRow, ModelRow.id == RolloutRow.model_id).where(ModelRow.name == model)
        return {"rollouts": [rollout_json(r) for r in session.scalars(query)]}


def _load(session: Session, rollout_id: int) -> RolloutRow:
    row = session.get(RolloutRow, rollout_id)
    if row is None:
        raise NotFound(f"rollout {rollout_id} does not exist; list them with GET /v1/rollouts")
    return row


@router.get("/rollouts/{rollout_id}", summary="One rollout: phase, split, step, latest criterion results")
def get_rollout(rollout_id: RolloutId, ctx: Ctx, _: Viewer, response: Response) -> dict[str, Any]:
    with ctx.session_factory() as session:
        out = rollout_json(_load(session, rollout_id))
    response.headers.update(etag(out["version"]))
    return out


def apply_command(ctx: ApiContext, who: Principal, rollout_id: int, expected_version: int, kind: str,
                  reason: str = "", weight_pct: float | None = None) -> dict[str, Any]:
    """Run one manual command through the state machine in one transaction with the version check.

    Raises Conflict when the rollout is not at `expected_version` (or changes meanwhile), Forbidden when the
    role is too low, and the machine's Conflict for an illegal command; returns the rollout as the API shows it.
    """
    try:
        with ctx.session_factory() as session, session.begin():
            row = _load(session, rollout_id)
            if row.version != expected_version:
                raise Conflict(f"rollout {rollout_id} is at version {row.version}, you sent {expected_version}: it "
                               f"changed since you read it; GET /v1/rollouts/{rollout_id} and retry with its ETag")
            before = summary(row)
            command = Command(kind=kind, actor=who.actor, role=who.role, reason=reason, weight_pct=weight_pct)
            transition = step(state_of(row), datetime.now(UTC), command=command)
            if not transition.changed:  # already in that state (pause a paused rollout): the same version back
                return rollout_json(row)
            write(session, row, transition)
            session.flush()
            audit(session, who.actor, f"rollout.{kind}", "rollout", rollout_id, before, summary(row))
            model = str(row.spec["model"])
            out = rollout_json(row)
            row_summary = summary(row)
            enqueue_notifications(session, ctx.notifier, row_summary, transition.actions)
    except (StaleDataError, IntegrityError):
        raise Conflict(f"rollout {rollout_id} changed while applying {kind.replace('_', '-')}: "
                       f"GET /v1/rollouts/{rollout_id} and retry with its ETag") from None
    apply_after_commit(ctx.channel, ctx.notifier, model, row_summary, transition.actions)
    return out


def _command(request: Request, ctx: ApiContext, who: Principal, rollout_id: int, kind: str, reason: str,
             response: Response, weight_pct: float | None = None) -> dict[str, Any]:
    out = apply_command(ctx, who, rollout_id, if_match(request, rollout_id), kind, reason, weight_pct)
    response.headers.update(etag(out["version"]))
    return out


@router.post("/rollouts/{rollout_id}/pause", openapi_extra=IF_MATCH_DOC,
             summary="Pause: hold the schedule at the current split")
def pause(rollout_id: RolloutId, request: Request, ctx: Ctx, who: Operator, response: Response,
          body: ReasonIn | None = None) -> dict[str, Any]:
    return _command(request, ctx, who, rollout_id, "pause", body.reason if body else "", response)


@router.post("/rollouts/{rollout_id}/resume", openapi_extra=IF_MATCH_DOC,
             summary="Resume the schedule (restores the step's weight)")
def resume(rollout_id: RolloutId, request: Request, ctx: Ctx, who: Operator, response: Response,
           body: ReasonIn | None = None) -> dict[str, Any]:
    return _command(request, ctx, who, rollout_id, "resume", body.reason if body else "", response)


@router.post("/rollouts/{rollout_id}/promote", openapi_extra=IF_MATCH_DOC,
             summary="Promote now (admin; recorded as an override)")
def promote(rollout_id: RolloutId, request: Request, ctx: Ctx, who: Admin, response: Response,
            body: ReasonIn | None = None) -> dict[str, Any]:
    return _command(request, ctx, who, rollout_id, "promote", body.reason if body else "", response)


@router.post("/rollouts/{rollout_id}/abort", openapi_extra=IF_MATCH_DOC,
             summary="Abort: all traffic back to the baseline")
def abort(rollout_id: RolloutId, request: Request, ctx: Ctx, who: Operator, response: Response,
          body: ReasonIn | None = None) -> dict[str, Any]:
    return _command(request, ctx, who, rollout_id, "abort", body.reason if body else "", response)


@router.post("/rollouts/{rollout_id}/weight", openapi_extra=IF_MATCH_DOC,
             summary="Set the candidate's weight; holds the schedule until resume")
def set_weight(rollout_id: RolloutId, body: WeightIn, request: Request, ctx: Ctx, who: Operator,
               response: Response) -> dict[str, Any]:
    return _command(request, ctx, who, rollout_id, "set_weight", body.reason, response, body.weight_pct)


@router.post("/rollouts/{rollout_id}/approve", openapi_extra=IF_MATCH_DOC,
             summary="Approve a rollout waiting at an approval step: it goes on (409 when it is not waiting)")
def approve(rollout_id: RolloutId, body: ApproveIn, request: Request, ctx: Ctx, who: Operator,
            response: Response) -> dict[str, Any]:
    return _command(request, ctx, who, rollout_id, "approve", body.reason, response)


@router.get("/rollouts/{rollout_id}/events", summary="The rollout's events with their evidence, oldest first")
def events(rollout_id: RolloutId, ctx: Ctx, _: Viewer,
           after_seq: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
           limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> dict[str, Any]:
    with ctx.session_factory() as session:
        _load(session, rollout_id)
        rows = session.scalars(select(RolloutEventRow).where(
            RolloutEventRow.rollout_id == rollout_id, RolloutEventRow.seq > after_seq,
        ).order_by(RolloutEventRow.seq).limit(limit))
        return {"events": [{
            "seq": e.seq, "ts": e.ts.isoformat(), "kind": e.kind, "actor": e.actor, "reason": e.reason,
            "from_phase": e.from_phase, "to_phase": e.to_phase, "step_index": e.step_index,
            "evidence": e.evidence, "fencing_token": e.fencing_token,
        } for e in rows]}
