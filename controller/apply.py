"""Declarative rollouts: apply a Rollout document to the database, and print a stored rollout back as one.

A document is found again by its metadata.name: the first apply creates the rollout (the same checks as POST
/v1/rollouts), applying it again changes nothing, and a changed document goes through the state machine's
`configure` command, which changes what may change (steps ahead; criteria before any verdict) and refuses the rest.
Every refusal names the document's field and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pydantic
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.api import rollout_json
from controller.api_rollouts import RolloutIn, insert_rollout
from controller.auth import Principal
from controller.machine import Command, changes_refused, step
from controller.transitions import audit, state_of, summary, write
from modelroll.db import ModelRow, RolloutEventRow, RolloutRow, VariantRow
from modelroll.errors import Conflict, ModelrollError
from modelroll.manifest import RolloutDocument, rollout_document
from modelroll.types import RolloutSpec, criteria_to_dict, step_to_dict


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one document did: created, configured (with the fields that changed), unchanged, skipped."""

    kind: str
    name: str
    action: str
    changed: tuple[str, ...] = ()
    rollout: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "changed": list(self.changed),
                "rollout": self.rollout}


def verdict_seen(session: Session, row: RolloutRow) -> bool:
    """Whether the statistics said pass or fail on any criterion at any look of this rollout (criteria frozen)."""
    def decided(results: Any) -> bool:
        return isinstance(results, list) and any(isinstance(r, dict) and r.get("verdict") in ("pass", "fail")
                                                 for r in results)
    if decided((row.evaluation or {}).get("results")):
        return True
    evidence = session.scalars(select(RolloutEventRow.evidence).where(RolloutEventRow.rollout_id == row.id))
    return any(decided((e or {}).get("results")) for e in evidence)


def _check_names(session: Session, doc: RolloutDocument) -> None:
    """Unknown model or variants are the document's error (400, with the line), not a missing resource."""
    model = session.scalar(select(ModelRow).where(ModelRow.name == doc.model))
    if model is None:
        known = sorted(session.scalars(select(ModelRow.name)))
        raise doc.error(("spec", "model"), f"model {doc.model!r} is not registered; registered models: {known}")
    variants = sorted(session.scalars(select(VariantRow.name).where(VariantRow.model_id == model.id,
                                                                    VariantRow.retired_at.is_(None))))
    for key, name in (("candidate", doc.candidate), ("baseline", doc.baseline)):
        if name is not None and name not in variants:
            raise doc.error(("spec", key), f"{name!r} is not a variant of model {doc.model!r}; its variants: "
                                           f"{variants}")


def _body(doc: RolloutDocument) -> RolloutIn:
    try:
        return RolloutIn.model_validate({
            "model": doc.model, "candidate": doc.candidate, "baseline": doc.baseline, "force": doc.force,
            "steps": [step_to_dict(s) for s in doc.steps], "criteria": criteria_to_dict(doc.criteria),
            "on_deadline": doc.on_deadline.value, "notifications": {"events": list(doc.notify_events)}})
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        path = ("spec", *first.get("loc", ()))
        raise doc.error(tuple(path), str(first.get("msg", "invalid"))) from None


def apply_rollout(session: Session, who: Principal, doc: RolloutDocument, now: datetime) -> Applied:
    """Create, change or leave the rollout named by the document, in the caller's transaction."""
    row = session.scalars(select(RolloutRow).where(RolloutRow.name == doc.name)).first()
    if row is None:
        _check_names(session, doc)
        try:
            row = insert_rollout(session, who, _body(doc), name=doc.name)
        except ModelrollError as exc:
            raise type(exc)(f"{doc.at(('metadata', 'name'))}: rollout {doc.name!r} not created: {exc.message}") \
                from None
        return Applied("Rollout", doc.name, "created", rollout=rollout_json(row))
    state = state_of(row)
    new = doc.spec(doc.baseline or state.spec.baseline)  # a different baseline is refused below, by field
    if new == state.spec:
        return Applied("Rollout", doc.name, "unchanged", rollout=rollout_json(row))
    seen = verdict_seen(session, row)
    refused = changes_refused(state, new, seen)
    if refused:
        raise Conflict(f"rollout {row.id} ({doc.name!r}, {state.phase.value}) not changed: "
                       + "; ".join(f"{doc.at(_path(r.field))}: {r.message}" for r in refused))
    before = summary(row)
    transition = step(state, now, command=Command(kind="configure", actor=who.actor, role=who.role,
                                                  reason=f"applied {doc.name!r}", spec=new, verdict_seen=seen))
    write(session, row, transition, now=now)
    session.flush()
    changed = tuple(transition.events[0].evidence.get("changed", {})) if transition.events else ()
    audit(session, who.actor, "rollout.configure", "rollout", row.id, before,
          {**summary(row), "name": doc.name, "changed": list(changed)})
    return Applied("Rollout", doc.name, "configured", changed, rollout_json(row))


def _path(dotted: str) -> tuple[str | int, ...]:
    """ "spec.steps[2]" → ("spec", "steps", 2), the path the document's lines are kept under."""
    out: list[str | int] = []
    for part in dotted.replace("]", "").split("."):
        name, _, index = part.partition("[")
        out.append(name)
        if index:
            out.append(int(index))
    return tuple(out)


def find(session: Session, ref: str) -> RolloutRow:
    """A rollout by id ("3") or by the metadata.name it was applied under."""
    from modelroll.errors import NotFound

    row = session.get(RolloutRow, int(ref)) if ref.isdigit() and len(ref) < 10 else \
        session.scalars(select(RolloutRow).where(RolloutRow.name == ref)).first()
    if row is None:
        raise NotFound(f"no rollout {'with id' if ref.isdigit() else 'named'} {ref!r}; "
                       "`modelroll rollout list` shows them")
    return row


def document_of(session: Session, row: RolloutRow) -> dict[str, Any]:
    """The rollout as the document that `apply` takes (spec) with its state (status, which apply ignores)."""
    spec = RolloutSpec.from_dict(row.spec)
    created = session.scalars(select(RolloutEventRow.evidence).where(
        RolloutEventRow.rollout_id == row.id, RolloutEventRow.kind == "created")).first() or {}
    out = rollout_json(row)
    status = {"id": row.id, "phase": row.phase, "step": f"{row.step_index + 1} of {len(spec.steps)}",
              "weights": out["weights"], "version": row.version, "reason": row.last_reason}
    if out["approval"]["waiting"]:
        status["approval"] = {k: v for k, v in out["approval"].items() if v is not None}
    return rollout_document(row.name, spec, forced=bool(created.get("forced")), status=status)

