"""Rollout rows ↔ machine state, and writing a transition: the row, its events and notifications, and (after
commit) its split.

Shared by the reconciler (automatic decisions) and the API (manual commands), so both record a change the same
way; the row's version column makes sure only one of two concurrent writers succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.machine import (
    Action,
    Notify,
    PublishSplit,
    RolloutState,
    SetProduction,
    Transition,
    state_from_dict,
    state_to_dict,
)
from controller.webhooks import WebhookNotifier
from modelroll import production
from modelroll.db import AuditEntryRow, ModelRow, RolloutEventRow, RolloutRow, VariantRow, utcnow
from modelroll.errors import Unavailable
from modelroll.live.base import LiveChannel, SplitConfig
from modelroll.types import RolloutSpec

log = logging.getLogger(__name__)


def state_of(row: RolloutRow) -> RolloutState:
    return state_from_dict(row.id, RolloutSpec.from_dict(row.spec), row.state or {})


def model_name(session: Session, row: RolloutRow) -> str:
    return str(row.spec.get("model") or session.get(ModelRow, row.model_id).name)  # type: ignore[union-attr]


def write(session: Session, row: RolloutRow, transition: Transition, *, fencing_token: int | None = None,
          now: datetime | None = None) -> None:
    """Put the transition's state on the row, insert its events and (on promotion) make the candidate what serves,
    all in the caller's transaction."""
    state = transition.state
    row.spec = state.spec.to_dict()  # a configure command changes it; every other transition keeps it
    row.phase = state.phase.value
    row.step_index = state.step_index
    row.weights = state.weights
    row.state = state_to_dict(state)
    row.last_reason = state.reason
    for event in transition.events:
        session.add(RolloutEventRow(
            rollout_id=row.id, seq=event.seq, ts=now or utcnow(), kind=event.kind, actor=event.actor,
            reason=event.reason, from_phase=event.from_phase.value, to_phase=event.to_phase.value,
            step_index=event.step_index, evidence=event.evidence, fencing_token=fencing_token,
        ))
    for action in transition.actions:
        if isinstance(action, SetProduction):
            model = session.get(ModelRow, row.model_id)
            variant = session.get(VariantRow, row.candidate_variant_id)
            assert model is not None and variant is not None, "foreign keys keep both"
            production.set_production(session, model, variant, action=production.PROMOTED, actor=action.actor,
                                      reason=action.reason, rollout_id=row.id)


def audit(session: Session, actor: str, action: str, target_kind: str, target_id: str | int,
          before: dict[str, Any], after: dict[str, Any]) -> None:
    session.add(AuditEntryRow(actor=actor, action=action, target_kind=target_kind, target_id=str(target_id),
                              before=before, after=after))


def summary(row: RolloutRow) -> dict[str, Any]:
    """The fields an audit entry or a webhook shows of a rollout."""
    spec = row.spec or {}
    return {"id": row.id, "model": spec.get("model"), "baseline": spec.get("baseline"),
            "candidate": spec.get("candidate"), "phase": row.phase, "step_index": row.step_index,
            "weights": dict(row.weights or {}), "version": row.version, "reason": row.last_reason}


def production_split(model: str, variant: str) -> SplitConfig:
    """What routers serve outside a rollout: the production variant alone."""
    return SplitConfig(model=model, weights={variant: 100.0}, baseline=variant)


def split_of(model: str, rollout_id: int, action: PublishSplit) -> SplitConfig:
    if action.final:
        return production_split(model, action.baseline)
    return SplitConfig(model=model, weights=action.weights, shadow=action.shadow, rollout_id=rollout_id,
                       step=action.step, baseline=action.baseline)


def desired_splits(session: Session) -> dict[str, SplitConfig]:
    """Every model's split as it should be now: its started, unfinished rollout's, else its production variant's."""
    out = {model: production_split(model, variant) for model, variant in production.serving(session).items()}
    for row in latest_per_model(session):
        state = state_of(row)
        if state.started_at is not None and not state.phase.terminal:
            model = model_name(session, row)
            out[model] = SplitConfig(model=model, weights=state.weights, shadow=state.shadow, rollout_id=row.id,
                                     step=state.step_index, baseline=state.serving)
    return out


def same_split(a: SplitConfig, b: SplitConfig | None) -> bool:
    return b is not None and (dict(a.weights), a.shadow, a.rollout_id, a.step, a.baseline) == (
        dict(b.weights), b.shadow, b.rollout_id, b.step, b.baseline)


def enqueue_notifications(session: Session, notifier: WebhookNotifier | None, row_summary: dict[str, Any],
                          actions: Sequence[Action]) -> None:
    """Write the transition's notifications to the webhook outbox, in the transaction that records it."""
    if notifier is None:
        return
    for action in actions:
        if isinstance(action, Notify):
            notifier.enqueue(session, action.kind, action.text, row_summary)


def apply_after_commit(channel: LiveChannel | None, notifier: WebhookNotifier | None, model: str,
                       row_summary: dict[str, Any], actions: Sequence[Action]) -> int:
    """Publish splits and wake the webhook sender once the transition is recorded; returns splits not published.

    A split that cannot be published now is not lost: the leader republishes every rollout's desired split.
    """
    unpublished = 0
    for action in actions:
        if isinstance(action, PublishSplit) and channel is not None:
            try:
                channel.publish_split(split_of(model, int(row_summary["id"]), action))
            except Unavailable as exc:
                unpublished += 1
                log.warning("split not published, the leader will retry rollout=%s why=%s", row_summary["id"], exc)
    if notifier is not None and any(isinstance(action, Notify) for action in actions):
        notifier.wake()
    return unpublished


def latest_per_model(session: Session) -> list[RolloutRow]:
    """The newest rollout of each model: its state decides what that model's split should be."""
    newest = select(func.max(RolloutRow.id)).group_by(RolloutRow.model_id)
    ids = list(session.scalars(newest))
    return list(session.scalars(select(RolloutRow).where(RolloutRow.id.in_(ids)))) if ids else []
