"""What serves each model: its production revisions, and the undo (admin) that makes an earlier variant serve again.

An undo is one transaction: the optional abort of the model's active rollout, the new revision and the audit; the
routers get the new split right after the commit.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from controller.api import MAX_ID, NAME_DOC, Admin, ApiContext, Ctx, SafeStr, Viewer
from controller.auth import Principal
from controller.machine import Command, Transition, step
from controller.transitions import (
    apply_after_commit,
    audit,
    enqueue_notifications,
    production_split,
    state_of,
    summary,
    write,
)
from modelroll import production
from modelroll.db import ModelRow
from modelroll.errors import Conflict, Unavailable
from modelroll.types import check_name

log = logging.getLogger(__name__)

router = APIRouter(tags=["models"])

ModelName = Annotated[str, Path(max_length=63, description="Model name.", json_schema_extra=NAME_DOC)]


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"to": "baseline", "reason": "p99"}})
    to: SafeStr | None = Field(default=None, max_length=63, json_schema_extra=NAME_DOC,
                               description="The variant to serve again.")
    revision: int | None = Field(default=None, ge=1, le=MAX_ID, description="Serve the variant of this revision.")
    reason: SafeStr = Field(default="", max_length=1000, description="Why; recorded in the revision and the audit.")
    abort_active: bool = Field(default=False, description="Abort the model's active rollout first (else 409).")
    expected_revision: int | None = Field(default=None, ge=0, le=MAX_ID, description=(
        "The revision you last saw; 409 if what serves changed since."))


@router.get("/models/{name}/revisions", summary="What served the model, newest first: who, when, why")
def revisions(name: ModelName, ctx: Ctx, _: Viewer,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    check_name("model", name)
    with ctx.session_factory() as session:
        return {"revisions": [r.to_dict() for r in production.history(session, name, limit)]}


@router.post("/models/{name}/rollback", summary="Undo: make an earlier production variant serve again (admin)")
def rollback(name: ModelName, body: RollbackIn, ctx: Ctx, who: Admin) -> dict[str, Any]:
    return roll_back(ctx, who, name, body)


def roll_back(ctx: ApiContext, who: Principal, name: str, body: RollbackIn) -> dict[str, Any]:
    """The undo, for the API and the status page: one transaction, then the routers get the new split."""
    who.require("admin")
    check_name("model", name)
    aborted: Transition | None = None
    try:
        with ctx.session_factory() as session, session.begin():
            # FOR NO KEY UPDATE: serializes changes of what serves this model, yet lets a promotion in flight
            # insert its revision (a foreign-key share lock) and lose on the rollout's version instead of deadlocking
            model = session.scalars(select(ModelRow).where(ModelRow.name == name)
                                    .with_for_update(key_share=True)).first()
            if model is None:
                production.model_row(session, name)  # raises NotFound naming the registered models
                raise AssertionError("unreachable")
            before = production.current(session, name)
            target = production.rollback_target(session, model, to_variant=body.to, to_revision=body.revision)
            active = production.active_rollout(session, model.id)
            if active is not None:
                if not body.abort_active:
                    raise Conflict(
                        f"model {name!r} has an active rollout {active.id} ({active.phase}) of "
                        f"{active.spec.get('candidate')!r}: abort it first (`modelroll rollout abort {active.id}`) "
                        "or pass --abort-active")
                rollout_before = summary(active)
                aborted = step(state_of(active), datetime.now(UTC), command=Command(
                    kind="abort", actor=who.actor, role=who.role,
                    reason=f"to roll model {name!r} back to {target.name!r}" + (
                        f": {body.reason}" if body.reason else "")))
                write(session, active, aborted)
                session.flush()
                audit(session, who.actor, "rollout.abort", "rollout", active.id, rollout_before, summary(active))
                enqueue_notifications(session, ctx.notifier, summary(active), aborted.actions)
            revision = production.set_production(
                session, model, target, action=production.ROLLBACK, actor=who.actor,
                reason=body.reason or f"rolled back to {target.name!r} by {who.actor}",
                # What this undo decided from: a promotion that committed meanwhile makes it a 409, not a second change
                expected_revision=body.expected_revision if body.expected_revision is not None else before.revision)
            audit(session, who.actor, "model.rollback", "model", name, before.to_dict(), revision.to_dict())
            aborted_summary = summary(active) if active is not None else None
    except (StaleDataError, IntegrityError):
        raise Conflict(f"model {name!r} or its rollout changed while rolling back: read it again and retry") from None
    if ctx.channel is not None:
        try:
            ctx.channel.publish_split(production_split(name, target.name))
        except Unavailable as exc:  # recorded: the leader publishes every model's desired split on its next tick
            log.warning("split not published after rollback, the leader will model=%s why=%s", name, exc)
    if aborted is not None and aborted_summary is not None:
        apply_after_commit(None, ctx.notifier, name, aborted_summary, aborted.actions)
    return {"model": name, "production": revision.to_dict(), "previous": before.to_dict(),
            "aborted_rollout": aborted_summary["id"] if aborted_summary is not None else None}
