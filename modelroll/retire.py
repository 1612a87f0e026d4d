"""Retire a variant: it no longer serves, cannot be rolled out again, and `gc` may then delete its artifacts.

Refused for what serves (the production variant), for either arm of an unfinished rollout and for the baseline
of an unfinished optimization job. Retiring twice changes nothing and says when it happened (idempotent).
Shared by `modelroll models retire` and the ops API; the audit entry is written here so both record it alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelroll import production
from modelroll.db import AuditEntryRow, ModelRow, OptimizationJobRow, VariantRow, utcnow
from modelroll.errors import Conflict, InvalidInput, NotFound
from modelroll.types import check_name

REASON_MAX_CHARS = 1000
ACTION = "variant.retire"
# modelroll.jobs.TERMINAL_STATES (a unit test keeps them equal): importing jobs costs the CLI onnx and numpy.
FINISHED_JOB_STATES = frozenset({"succeeded", "failed"})


@dataclass(frozen=True, slots=True)
class Retired:
    """The outcome: `already` is True when the variant was retired before and nothing changed."""

    model: str
    variant: str
    retired_at: datetime
    already: bool

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "variant": self.variant, "retired_at": self.retired_at.isoformat(),
                "already_retired": self.already}


def _variant(session: Session, model: ModelRow, name: str) -> VariantRow:
    row = session.scalar(select(VariantRow).where(VariantRow.model_id == model.id, VariantRow.name == name)
                         .with_for_update())
    if row is None:
        known = session.scalars(select(VariantRow.name).where(VariantRow.model_id == model.id)
                                .order_by(VariantRow.id)).all()
        raise NotFound(f"model {model.name!r} has no variant {name!r}: its variants are {', '.join(known) or 'none'}")
    return row


def _refuse_if_in_use(session: Session, model: ModelRow, variant: VariantRow) -> None:
    # The unfinished rollout is read before what serves: a promotion committing between the two reads is then
    # seen by the second (the variant serves), never missed by both.
    rollout = production.active_rollout(session, model.id)
    if rollout is not None and variant.id in (rollout.baseline_variant_id, rollout.candidate_variant_id):
        arm = "candidate" if variant.id == rollout.candidate_variant_id else "baseline"
        raise Conflict(f"variant {variant.name!r} of model {model.name!r} is the {arm} of rollout {rollout.id}, "
                       f"which is {rollout.phase}: abort it (`modelroll rollout abort {rollout.id}`) or let it "
                       "finish, then retire the variant")
    serving = production.current_row(session, model.id)
    if serving is not None and serving[1].id == variant.id:
        raise Conflict(f"variant {variant.name!r} serves model {model.name!r} in production (revision "
                       f"{serving[0].revision}): make another variant serve first (promote a rollout or roll back "
                       "to another variant), then retire this one")
    job = session.scalar(select(OptimizationJobRow.id).where(
        OptimizationJobRow.baseline_variant_id == variant.id,
        OptimizationJobRow.status.not_in(FINISHED_JOB_STATES)).order_by(OptimizationJobRow.id).limit(1))
    if job is not None:
        raise Conflict(f"variant {variant.name!r} of model {model.name!r} is the baseline of optimization job {job}, "
                       "which has not finished: wait for it (`modelroll optimize report "
                       f"{job}`), then retire the variant")


def check_reason(reason: str) -> str:
    if not isinstance(reason, str) or len(reason) > REASON_MAX_CHARS or "\x00" in reason:
        raise InvalidInput(f"reason must be text of at most {REASON_MAX_CHARS} characters (no NUL)")
    return reason


def retire_variant(session: Session, model: str, variant: str, *, actor: str, reason: str = "",
                   now: datetime | None = None) -> Retired:
    """Mark `variant` of `model` retired in the caller's transaction and audit it; see the module for refusals."""
    check_name("model", model)
    check_name("variant", variant)
    check_reason(reason)
    model_row = production.model_row(session, model)
    # The model row is locked as rollout creation locks it, so a rollout cannot start on a variant retired at
    # the same moment (PostgreSQL; SQLite serializes writers anyway).
    session.scalar(select(ModelRow.id).where(ModelRow.id == model_row.id).with_for_update())
    row = _variant(session, model_row, variant)
    if row.retired_at is not None:
        return Retired(model, variant, row.retired_at, already=True)
    _refuse_if_in_use(session, model_row, row)
    row.retired_at = now or utcnow()
    session.add(AuditEntryRow(actor=actor, action=ACTION, target_kind="variant", target_id=f"{model}/{variant}",
                              before={"retired_at": None},
                              after={"retired_at": row.retired_at.isoformat(), "reason": reason}))
    session.flush()
    return Retired(model, variant, row.retired_at, already=False)
