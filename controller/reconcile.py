"""The reconciler: while leader, fold new samples into windows, evaluate each active rollout, apply its transition.

Every write is fenced (controller/fencing.py) and a rollout's state, its events and the sample cursor move in the
same transactions as their inputs, so a controller killed at any point resumes with nothing lost or doubled.
The statistics see every sample since the rollout started (not per step): their confidence sequences are valid
at any number of looks, so evidence carries across steps; a step's own minimum samples guard its exposure.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from controller import aggregate, criterion, stats
from controller.fencing import StaleLeader, fenced, take_office
from controller.leader import LeaderElector
from controller.machine import Evaluation, Transition, result_to_dict, step
from controller.transitions import (
    apply_after_commit,
    desired_splits,
    enqueue_notifications,
    model_name,
    same_split,
    state_of,
    summary,
    write,
)
from controller.webhooks import WebhookNotifier
from modelroll import catalog
from modelroll.catalog import newest_report
from modelroll.db import RolloutRow
from modelroll.errors import Unavailable
from modelroll.figures import Figures
from modelroll.live.base import LiveChannel
from modelroll.settings import Settings
from modelroll.types import DEFAULT_STEPS, TERMINAL_PHASES, Criteria, CriterionResult, Phase, Verdict

log = logging.getLogger(__name__)

GROUP = "controller"
CONSUMER = "leader"  # one name for every leader, so a new leader is redelivered what the old one never acked
BATCH = 2000
MAX_BATCHES_PER_TICK = 50
CATALOG_POLL_S = 0.05  # how often the leader looks for catalog changes made where no channel reaches (a CLI)

Evaluate = Callable[[Criteria, Any], list[CriterionResult]]
Overall = Callable[[Sequence[CriterionResult]], Verdict]


def _shadow_steps(spec: Mapping[str, Any]) -> frozenset[int]:
    """The steps of a stored spec that mirror requests to the candidate (the default steps when none are given)."""
    steps = spec.get("steps")
    if steps is None:
        return frozenset(i for i, step in enumerate(DEFAULT_STEPS) if step.shadow)
    return frozenset(i for i, step in enumerate(steps) if isinstance(step, Mapping) and step.get("shadow"))


def default_holder() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Reconciler:
    def __init__(self, settings: Settings, channel: LiveChannel, session_factory: Callable[[], Session], *,
                 holder: str | None = None, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 notifier: WebhookNotifier | None = None, evaluate: Evaluate = stats.evaluate,
                 overall: Overall = stats.overall) -> None:
        self.settings = settings
        self.channel = channel
        self.session_factory = session_factory
        self.clock = clock
        self.notifier = notifier
        self.evaluate = evaluate
        self.overall = overall
        self.elector = LeaderElector(channel, holder or default_holder(), settings.leader_lease_s,
                                     take_office=lambda lock_token: take_office(session_factory, lock_token))
        self.counts: Counter[str] = Counter()  # decisions by event kind, samples folded/skipped, tick errors
        self.windows = aggregate.WindowCache()
        self._catalog_marks: dict[str, tuple[int, int, int]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leading(self) -> bool:
        return self.elector.token() is not None

    # --- one pass ----------------------------------------------------------------------------------

    def tick(self) -> bool:
        """One reconcile pass if this process leads; returns whether it did."""
        token = self.elector.token()
        if token is None:
            return False
        try:
            self.fold_samples(token)
            active = self._active_ids()
            self.windows.keep_only(active)
            for rollout_id in active:
                try:
                    self.reconcile_rollout(rollout_id, token)
                except (StaleLeader, Unavailable, DBAPIError):
                    raise
                except Exception:  # one broken rollout must not stop the others; counted and logged
                    self.counts["rollout_errors"] += 1
                    log.exception("cannot reconcile rollout=%s", rollout_id)
            self.publish_desired_splits()
        except StaleLeader as exc:
            log.warning("stepping down: %s", exc)
            self.counts["stale_leader"] += 1
            self.elector.step_down()
        return True

    def fold_samples(self, token: int) -> int:
        """Fold what the channel has into windows; the cursor moves in the same transaction. Returns samples."""
        routes, by_model = self._routes()
        folded = 0
        for _ in range(MAX_BATCHES_PER_TICK):
            batch = self.channel.read_samples(GROUP, CONSUMER, BATCH)
            if not batch.ids:
                break
            # A sample of a rollout that has just ended (sent before the router heard) still belongs to its evidence.
            ended = {s.rollout_id for s in batch.samples if s.rollout_id is not None} - routes.keys()
            if ended:
                routes.update(self._routes(ended)[0])
            with fenced(self.session_factory, token) as session:
                kept, cursor = aggregate.fresh(batch.ids, batch.samples, aggregate.read_cursor(session))
                windows, skipped = aggregate.fold(kept, routes, by_model)
                aggregate.store(session, windows, cursor)
            self.channel.ack_samples(GROUP, batch.ids)
            folded += len(kept)
            self.counts["samples_folded"] += len(kept) - skipped
            self.counts["samples_skipped"] += skipped
            self.counts["samples_redelivered"] += len(batch.ids) - len(kept)
        return folded

    def reconcile_rollout(self, rollout_id: int, token: int, *, attempts: int = 3) -> Transition | None:
        """Evaluate and step one rollout; retried when the API changed it meanwhile (version conflict)."""
        for _ in range(attempts):
            try:
                return self._reconcile_once(rollout_id, token)
            except (StaleDataError, IntegrityError) as exc:
                self.counts["version_conflicts"] += 1
                log.info("rollout changed while deciding, retrying rollout=%s why=%s", rollout_id,
                         type(exc).__name__)
        return None

    def _reconcile_once(self, rollout_id: int, token: int) -> Transition | None:
        now = self.clock()
        with fenced(self.session_factory, token) as session:
            row = session.get(RolloutRow, rollout_id, populate_existing=True)
            if row is None or Phase(row.phase) in TERMINAL_PHASES:
                return None
            state = state_of(row)
            evaluation = None
            if state.started_at is not None:
                evaluation, record = self._evaluate(session, row, now)
                session.execute(update(RolloutRow).where(RolloutRow.id == row.id).values(evaluation=record)
                                .execution_options(synchronize_session=False))
            transition = step(state, now, evaluation)
            if transition.changed:
                write(session, row, transition, fencing_token=token, now=now)
                session.flush()
            model = model_name(session, row)
            row_summary = summary(row)
            enqueue_notifications(session, self.notifier, row_summary, transition.actions)
        for event in transition.events:
            self.counts[f"decision_{event.kind}"] += 1
            log.info("rollout transition rollout=%s kind=%s seq=%s reason=%s", rollout_id, event.kind,
                     event.seq, event.reason)
        apply_after_commit(self.channel, self.notifier, model, row_summary, transition.actions)
        return transition

    def _evaluate(self, session: Session, row: RolloutRow, now: datetime) -> tuple[Evaluation, dict[str, Any]]:
        state = state_of(row)
        spec = state.spec
        previous = row.evaluation or {}
        looks = int(previous.get("looks", 0)) + 1
        windows = self.windows.load(session, row.id)
        # The running intervals the last look left (its record is this rollout's `evaluation`): this look intersects
        # them, so a verdict never goes back; each result records what it was carried, so every decision replays.
        obs = aggregate.observations(windows, spec.baseline, spec.candidate, looks=looks,
                                     offline_memory_bytes=self._offline_memory(session, row),
                                     carried=criterion.carry(previous.get("results") or []))
        results = self.evaluate(spec.criteria, obs)
        verdict = self.overall(results)
        base_n, cand_n = aggregate.step_counts(session, row.id, state.step_index, spec.baseline, spec.candidate)
        evaluation = Evaluation(tuple(results), verdict, base_n, cand_n, obs.candidate.cannot_serve)
        record = {
            "at": now.isoformat(), "looks": looks, "verdict": verdict.value, "step_index": state.step_index,
            "results": [result_to_dict(r) for r in results],
            "step_samples": {"baseline": base_n, "candidate": cand_n},
            "arms": {name: {"requests": arm.requests, "errors": arm.errors, "labelled": arm.labelled,
                            "correct": arm.correct, "latency_n": int(arm.latency_ms.size)}
                     for name, arm in (("baseline", obs.baseline), ("candidate", obs.candidate))},
            "paired": obs.paired.n,
            "cannot_serve": {name: arm.cannot_serve for name, arm in (("baseline", obs.baseline),
                                                                      ("candidate", obs.candidate))
                             if arm.cannot_serve},
        }
        return evaluation, record

    @staticmethod
    def _offline_memory(session: Session, row: RolloutRow) -> tuple[int | None, int | None]:
        """The optimizer's model memory (baseline, candidate) at the batch size where the candidate saves least: a
        rollout gated on the offline figure must meet the gate at every batch size the optimizer measured."""
        report = newest_report(session, row.candidate_variant_id)
        if report is None or not report.candidate_figures:
            return None, None
        try:
            base, cand = Figures.from_dict(report.baseline_figures), Figures.from_dict(report.candidate_figures)
        except (KeyError, TypeError, ValueError) as exc:  # a row of another figures schema: no offline note
            log.warning("rollout=%s candidate_report=%s figures unreadable: %r", row.id, report.id, exc)
            return None, None
        pairs = [(b, c) for b in base.memory if (c := cand.memory_at(b.batch_size)) is not None]
        if not pairs:
            return None, None
        b, c = max(pairs, key=lambda pair: pair[1].memory_bytes / max(1, pair[0].memory_bytes))
        return b.memory_bytes, c.memory_bytes

    def publish_desired_splits(self) -> int:
        """Publish every model's split that differs from what it should be: its running rollout's, else its
        production variant's (a model registered or rolled back by a CLI, a crash between commit and publish)."""
        with self.session_factory() as session:
            wanted = desired_splits(session)
        current = self.channel.get_splits()
        published = 0
        for split in wanted.values():
            if not same_split(split, current.get(split.model)):
                self.channel.publish_split(split)
                published += 1
                self.counts["splits_republished"] += 1
        return published

    def follow_catalog(self) -> int:
        """While leader: republish the split of every model whose catalog changed since the last look (a model
        registered, a variant added or retired, what serves changed), so routers reload without a restart.

        Changes made through the API are published at once; this catches those made straight in the database.
        """
        if not self.leading:
            return 0
        with self.session_factory() as session:
            marks = catalog.marks(session)
            seen, self._catalog_marks = self._catalog_marks, marks
            if seen is None:  # first look: the tick's publish_desired_splits covers what differs
                return 0
            changed = [model for model, mark in marks.items() if seen.get(model) != mark]
            wanted = desired_splits(session) if changed else {}
        for model in changed:
            if model in wanted:
                self.channel.publish_split(wanted[model])
                self.counts["catalog_changes_published"] += 1
        return len(changed)

    def _active_ids(self) -> list[int]:
        with self.session_factory() as session:
            return list(session.scalars(select(RolloutRow.id).where(
                RolloutRow.phase.not_in([p.value for p in TERMINAL_PHASES])).order_by(RolloutRow.id)))

    def _routes(self, ids: set[int] | None = None) -> tuple[dict[int, aggregate.Route], dict[str, aggregate.Route]]:
        """The active rollouts (or the rollouts `ids`, whatever their phase) as the fold sees them; by model only the
        active ones, for samples that carry no rollout id."""
        query = select(RolloutRow).where(RolloutRow.phase.not_in([p.value for p in TERMINAL_PHASES])) \
            if ids is None else select(RolloutRow).where(RolloutRow.id.in_(sorted(ids)))
        with self.session_factory() as session:
            rows = session.scalars(query).all()
            routes = {r.id: aggregate.Route(r.id, model_name(session, r), r.spec["baseline"], r.spec["candidate"],
                                            r.step_index, _shadow_steps(r.spec)) for r in rows}
        by_model = {route.model: route for route in sorted(routes.values(), key=lambda r: r.rollout_id)}
        return routes, by_model

    # --- the loop ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Reconcile every `reconcile_interval_s` until stop(); errors are counted and the loop goes on."""
        self.elector.start()
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self.tick()
                except (Unavailable, DBAPIError) as exc:
                    # Fail static: change nothing until the database and the channel answer again.
                    self.counts["tick_errors"] += 1
                    log.warning("reconcile pass failed, retrying next tick why=%s", exc)
                except Exception:  # a bug must not end the loop silently: counted, logged, retried
                    self.counts["tick_errors"] += 1
                    log.exception("reconcile pass failed, retrying next tick")
                deadline = started + self.settings.reconcile_interval_s
                while (left := deadline - time.monotonic()) > 0 and not self._stop.wait(min(left, CATALOG_POLL_S)):
                    try:
                        self.follow_catalog()
                    except (Unavailable, DBAPIError) as exc:
                        self.counts["tick_errors"] += 1
                        log.warning("catalog look failed, retrying why=%s", exc)
        finally:
            self.elector.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
