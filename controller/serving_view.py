"""What the status pages say about what serves: each model's production variant and how it got there, and the
optimizer's verdict on a rollout's candidate beside the live one. Read-only queries plus pure wording."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.status_view import age
from modelroll import production
from modelroll.db import ModelRow, RolloutEventRow


@dataclass(frozen=True, slots=True)
class ServingLine:
    """One model: what serves it, since when, how, and what an undo would serve again."""

    model: str
    variant: str
    revision: int
    since: str
    how: str
    undo_to: str | None  # the variant of the revision before, None when there is none
    active_rollout: int | None


def how(revision: production.Revision) -> str:
    if revision.action == production.PROMOTED:
        via = f"rollout {revision.rollout_id}" if revision.rollout_id else "a rollout"
        return f"promoted by {via} ({revision.actor})"
    if revision.action == production.ROLLBACK:
        return f"rolled back by {revision.actor}" + (f": {revision.reason}" if revision.reason else "")
    return f"{revision.action} by {revision.actor}"


def serving_lines(session: Session, now: datetime) -> list[ServingLine]:
    lines = []
    for model in session.scalars(select(ModelRow).order_by(ModelRow.name)):
        revisions = production.history(session, model.name, limit=2)
        if not revisions:
            continue
        current = revisions[0]
        active = production.active_rollout(session, model.id)
        lines.append(ServingLine(
            model=model.name, variant=current.variant, revision=current.revision, since=age(current.created_at, now),
            how=how(current), undo_to=revisions[1].variant if len(revisions) > 1 else None,
            active_rollout=active.id if active is not None else None))
    return lines


def offline_text(offline: dict[str, Any] | None, forced: bool, actor: str) -> str:
    """The optimizer's verdict on the candidate as recorded when the rollout was created."""
    if offline is None:
        return "not recorded (rollout created before offline verdicts were kept)"
    if offline.get("report") is None:
        verdict = "no offline report (registered by hand)"
    elif offline.get("passed"):
        return f"passed every offline gate (optimization job {offline.get('job')})"
    else:
        gates = ", ".join(offline.get("failed_gates") or []) or "a gate"
        verdict = f"failed offline: {gates} (optimization job {offline.get('job')})"
    return verdict + (f"; rolled out with force by {actor}" if forced else "")


def created_offline(session: Session, rollout_id: int, created_by: str) -> str:
    evidence = session.scalar(select(RolloutEventRow.evidence).where(
        RolloutEventRow.rollout_id == rollout_id, RolloutEventRow.kind == "created")) or {}
    return offline_text(evidence.get("offline"), bool(evidence.get("forced")), created_by)
