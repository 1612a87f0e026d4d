"""Each model's production variant: the one that serves outside a rollout, with the history of every change.

The model's highest revision is what serves now. A revision is only ever added (promotion, undo, registration),
inside the caller's transaction, so the decision and the change of what serves commit together; the unique
(model, revision) pair lets only one of two concurrent writers add the next revision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelroll.db import ModelRow, ProductionRevisionRow, RolloutRow, VariantRow
from modelroll.errors import Conflict, InvalidInput, NotFound
from modelroll.types import TERMINAL_PHASES

REGISTERED = "registered"
PROMOTED = "promoted"
ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Revision:
    """One change of what serves `model`: which variant, why, who, through which rollout or command."""

    model: str
    revision: int
    variant: str
    action: str
    actor: str
    reason: str
    rollout_id: int | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "revision": self.revision, "variant": self.variant, "action": self.action,
                "actor": self.actor, "reason": self.reason, "rollout_id": self.rollout_id,
                "created_at": self.created_at.isoformat()}


def _revision(model: str, row: ProductionRevisionRow, variant: str) -> Revision:
    return Revision(model=model, revision=row.revision, variant=variant, action=row.action, actor=row.actor,
                    reason=row.reason, rollout_id=row.rollout_id, created_at=row.created_at)


def model_row(session: Session, name: str) -> ModelRow:
    row = session.scalar(select(ModelRow).where(ModelRow.name == name))
    if row is None:
        known = session.scalars(select(ModelRow.name).order_by(ModelRow.name)).all()
        listed = f"registered models: {', '.join(known)}" if known else "no model is registered yet"
        raise NotFound(f"no model named {name!r} ({listed}): see `modelroll models list`")
    return row


def current_row(session: Session, model_id: int) -> tuple[ProductionRevisionRow, VariantRow] | None:
    found = session.execute(
        select(ProductionRevisionRow, VariantRow).join(VariantRow, VariantRow.id == ProductionRevisionRow.variant_id)
        .where(ProductionRevisionRow.model_id == model_id)
        .order_by(ProductionRevisionRow.revision.desc()).limit(1)
    ).first()
    return (found[0], found[1]) if found is not None else None


def current(session: Session, model: str) -> Revision:
    """What serves `model` now (NotFound for an unknown model)."""
    row = model_row(session, model)
    found = current_row(session, row.id)
    if found is None:
        raise NotFound(f"model {model!r} has no production variant: register it again")
    return _revision(model, found[0], found[1].name)


def serving(session: Session) -> dict[str, str]:
    """Every model's production variant by model name (one query: the routers' and the leader's view)."""
    rows = session.execute(
        select(ModelRow.name, VariantRow.name, ProductionRevisionRow.revision)
        .join(ProductionRevisionRow, ProductionRevisionRow.model_id == ModelRow.id)
        .join(VariantRow, VariantRow.id == ProductionRevisionRow.variant_id)
    ).all()
    best: dict[str, tuple[int, str]] = {}
    for model, variant, revision in rows:
        if model not in best or revision > best[model][0]:
            best[model] = (revision, variant)
    return {model: variant for model, (_, variant) in best.items()}


def history(session: Session, model: str, limit: int = 100) -> list[Revision]:
    """The model's revisions, newest first."""
    row = model_row(session, model)
    rows = session.execute(
        select(ProductionRevisionRow, VariantRow.name)
        .join(VariantRow, VariantRow.id == ProductionRevisionRow.variant_id)
        .where(ProductionRevisionRow.model_id == row.id)
        .order_by(ProductionRevisionRow.revision.desc()).limit(limit)
    ).all()
    return [_revision(model, revision, variant) for revision, variant in rows]


def active_rollout(session: Session, model_id: int) -> RolloutRow | None:
    return session.scalars(select(RolloutRow).where(
        RolloutRow.model_id == model_id, RolloutRow.phase.not_in([p.value for p in TERMINAL_PHASES]))
        .order_by(RolloutRow.id)).first()


def set_production(session: Session, model: ModelRow, variant: VariantRow, *, action: str, actor: str,
                   reason: str = "", rollout_id: int | None = None, expected_revision: int | None = None) -> Revision:
    """Make `variant` what serves `model` as the next revision, in the caller's transaction.

    Raises Conflict when `expected_revision` is not the current one, or when another writer added the next
    revision first (the message names the revision that serves now).
    """
    if variant.model_id != model.id:
        raise InvalidInput(f"variant {variant.name!r} is not a variant of model {model.name!r}")
    if variant.retired_at is not None:
        raise Conflict(f"variant {variant.name!r} of model {model.name!r} was retired "
                       f"{variant.retired_at:%Y-%m-%d %H:%M} UTC and cannot serve again")
    found = current_row(session, model.id)
    at = found[0].revision if found is not None else 0
    if expected_revision is not None and expected_revision != at:
        serving_now = f"revision {at} ({found[1].name})" if found is not None else "no revision yet"
        raise Conflict(f"model {model.name!r} is at {serving_now}, you expected revision {expected_revision}: "
                       "it changed since you read it; read it again and retry")
    row = ProductionRevisionRow(model_id=model.id, revision=at + 1, variant_id=variant.id, action=action,
                                actor=actor, reason=reason, rollout_id=rollout_id)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # the transaction is lost with it: the caller's whole change is refused
        raise Conflict(f"what serves model {model.name!r} changed at the same time: another change took revision "
                       f"{at + 1} first; read it again (`modelroll models list`) and retry") from None
    return _revision(model.name, row, variant.name)


def rollback_target(session: Session, model: ModelRow, *, to_variant: str | None,
                    to_revision: int | None) -> VariantRow:
    """The variant an undo returns to: a named variant, the one of revision N, or by default the one that served
    before the current revision."""
    if to_variant is not None and to_revision is not None:
        raise InvalidInput("give either --to VARIANT or --revision N, not both")
    found = current_row(session, model.id)
    if found is None:
        raise NotFound(f"model {model.name!r} has no production variant to roll back from")
    at, serving_now = found
    if to_variant is not None:
        target = session.scalar(select(VariantRow).where(VariantRow.model_id == model.id,
                                                         VariantRow.name == to_variant))
        if target is None:
            known = session.scalars(select(VariantRow.name).where(VariantRow.model_id == model.id)
                                    .order_by(VariantRow.id)).all()
            raise NotFound(f"model {model.name!r} has no variant {to_variant!r}: its variants are {', '.join(known)}")
    else:
        wanted = to_revision if to_revision is not None else at.revision - 1
        if wanted < 1 or wanted > at.revision:
            raise NotFound(f"model {model.name!r} has no revision {wanted}: its revisions are 1 to {at.revision}"
                           + ("" if to_revision is not None else "; there is nothing earlier to roll back to"))
        revision = session.scalar(select(ProductionRevisionRow).where(
            ProductionRevisionRow.model_id == model.id, ProductionRevisionRow.revision == wanted))
        if revision is None:  # revisions are never deleted; a gap means the table was edited by hand
            raise NotFound(f"model {model.name!r} has no revision {wanted}")
        target = session.get(VariantRow, revision.variant_id)
        assert target is not None
    if target.id == serving_now.id:
        raise Conflict(f"{target.name!r} already serves model {model.name!r} (revision {at.revision}): "
                       "nothing to roll back")
    return target
