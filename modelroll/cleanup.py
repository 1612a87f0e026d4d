"""Give disk back: purge raw sample data past retention, delete garbage artifacts, shrink an SQLite database.

`collect` is what `modelroll gc` and the controller leader's hourly pass run. Retention deletes the sample
windows of finished rollouts older than `MODELROLL_RETENTION_DAYS` (never an unfinished rollout's: its decisions
still read them) and delivered webhook notifications; the rollouts' decisions, evidence and evaluations stay.
modelroll/garbage.py decides which stored files go; rows are marked removed before their files are deleted,
so an interrupted pass leaves files the next pass takes, never a live row without its file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from modelroll import garbage, store_files
from modelroll.db import (
    ArtifactRow,
    AuditEntryRow,
    ModelRow,
    OptimizationJobRow,
    RolloutRow,
    SampleWindowRow,
    VariantRow,
    WebhookOutboxRow,
)
from modelroll.retire import FINISHED_JOB_STATES
from modelroll.types import TERMINAL_PHASES

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class Report:
    """What one pass removed (or, dry, would remove); sizes in bytes."""

    dry_run: bool
    retention_days: int
    cutoff: datetime
    windows: int = 0
    notifications: int = 0
    artifacts: tuple[dict[str, Any], ...] = ()  # sha256, format, size_bytes, owners
    orphans: tuple[str, ...] = ()
    trees: tuple[str, ...] = ()
    scratch: tuple[str, ...] = ()
    files_bytes: int = 0
    revived: int = 0
    missing: tuple[str, ...] = ()  # sha256 of live artifacts absent from the store
    trees_kept_for_jobs: tuple[int, ...] = ()
    errors: tuple[str, ...] = ()
    database_bytes_before: int | None = None  # SQLite only: the file and its WAL
    database_bytes_after: int | None = None

    @property
    def freed_bytes(self) -> int:
        shrunk = 0
        if self.database_bytes_before is not None and self.database_bytes_after is not None:
            shrunk = max(0, self.database_bytes_before - self.database_bytes_after)
        return self.files_bytes + shrunk

    @property
    def changed(self) -> bool:
        return bool(self.windows or self.notifications or self.artifacts or self.orphans or self.trees
                    or self.scratch or self.revived)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "retention_days": self.retention_days, "cutoff": self.cutoff.isoformat(),
            "sample_windows": self.windows, "webhook_notifications": self.notifications,
            "artifacts": list(self.artifacts), "orphaned_files": list(self.orphans),
            "extracted_folders": list(self.trees), "temporary_files": list(self.scratch),
            "files_bytes": self.files_bytes, "revived": self.revived, "missing": list(self.missing),
            "trees_kept_for_jobs": list(self.trees_kept_for_jobs), "errors": list(self.errors),
            "database_bytes_before": self.database_bytes_before, "database_bytes_after": self.database_bytes_after,
            "freed_bytes": self.freed_bytes,
        }


# --- retention -------------------------------------------------------------------------------------------


def _finished_rollouts() -> Any:
    return select(RolloutRow.id).where(RolloutRow.phase.in_([p.value for p in TERMINAL_PHASES]))


def purge(session: Session, cutoff: datetime, *, dry_run: bool) -> tuple[int, int]:
    """Delete (or count) finished rollouts' sample windows and delivered notifications older than `cutoff`."""
    windows = (SampleWindowRow.window_end < cutoff, SampleWindowRow.rollout_id.in_(_finished_rollouts()))
    notifications = (WebhookOutboxRow.delivered_at.is_not(None), WebhookOutboxRow.delivered_at < cutoff)
    if dry_run:
        return (int(session.scalar(select(func.count()).select_from(SampleWindowRow).where(*windows)) or 0),
                int(session.scalar(select(func.count()).select_from(WebhookOutboxRow).where(*notifications)) or 0))
    deleted_windows = session.execute(delete(SampleWindowRow).where(*windows)
                                      .execution_options(synchronize_session=False))
    deleted_notifications = session.execute(delete(WebhookOutboxRow).where(*notifications)
                                            .execution_options(synchronize_session=False))
    return int(deleted_windows.rowcount), int(deleted_notifications.rowcount)  # type: ignore[attr-defined]


# --- facts ---------------------------------------------------------------------------------------------


def read_facts(session: Session, root: Path) -> garbage.Facts:
    """Every artifact row with its live and retired referrers, the sha256s live rows name, and the disk."""
    owners: dict[int, list[tuple[str, bool]]] = {}
    live_sha256: set[str] = set()
    released_sha256: set[str] = set()
    rows = session.execute(select(VariantRow, ModelRow.name).join(ModelRow, ModelRow.id == VariantRow.model_id)).all()
    for variant, model in rows:
        live = variant.retired_at is None
        owners.setdefault(variant.artifact_id, []).append((f"{model}/{variant.name}", live))
        if variant.source_artifact_id is not None:
            owners.setdefault(variant.source_artifact_id, []).append((f"{model}/{variant.name} (source)", live))
        eval_sha = (variant.recipe or {}).get("eval_sha256")
        if isinstance(eval_sha, str):
            (live_sha256 if live else released_sha256).add(eval_sha)
    unfinished: list[int] = []
    for job_id, status, request in session.execute(select(OptimizationJobRow.id, OptimizationJobRow.status,
                                                          OptimizationJobRow.request)):
        eval_sha = (request or {}).get("eval_sha256")
        running = status not in FINISHED_JOB_STATES
        if running:
            unfinished.append(job_id)
        if isinstance(eval_sha, str):
            (live_sha256 if running else released_sha256).add(eval_sha)
    artifacts = [
        garbage.ArtifactFact(id=row.id, sha256=row.sha256, format=row.format, removed=row.removed_at is not None,
                             live_refs=sum(live for _, live in owners.get(row.id, [])),
                             owners=tuple(name for name, _ in owners.get(row.id, [])))
        for row in session.scalars(select(ArtifactRow).order_by(ArtifactRow.id))
    ]
    files, trees, scratch = store_files.listing(root)
    return garbage.Facts(artifacts=artifacts, live_sha256=frozenset(live_sha256),
                         released_sha256=frozenset(released_sha256), files=files, trees=trees, scratch=scratch,
                         unfinished_jobs=tuple(unfinished))


# --- the pass --------------------------------------------------------------------------------------------


def _mark_removed(session: Session, ids: list[int], now: datetime) -> set[int]:
    """Mark the rows removed unless a live variant took one up since the plan was made; returns those marked."""
    refers = or_(VariantRow.artifact_id == ArtifactRow.id, VariantRow.source_artifact_id == ArtifactRow.id)
    live = exists().where(refers, VariantRow.retired_at.is_(None))
    marked = set(session.scalars(select(ArtifactRow.id).where(
        ArtifactRow.id.in_(ids), ArtifactRow.removed_at.is_(None), ~live).with_for_update()))
    if marked:
        session.execute(update(ArtifactRow).where(ArtifactRow.id.in_(marked)).values(removed_at=now)
                        .execution_options(synchronize_session=False))
    return marked


def _sqlite_bytes(engine: Engine) -> int | None:
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return None
    path = Path(engine.url.database)
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def shrink_sqlite(engine: Engine) -> None:
    """Give an SQLite file's free pages back to the disk (a one-time VACUUM switches it to incremental vacuum),
    then empty the WAL. Waits for other writers (busy timeout); PostgreSQL's autovacuum needs none of this."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if conn.exec_driver_sql("PRAGMA freelist_count").scalar():
            if conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() != 2:  # 2 = incremental
                conn.exec_driver_sql("PRAGMA auto_vacuum = INCREMENTAL")
                conn.exec_driver_sql("VACUUM")
            else:
                conn.exec_driver_sql("PRAGMA incremental_vacuum")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def collect(sessions: sessionmaker[Session], root: Path, *, retention_days: int, actor: str,
            now: datetime | None = None, dry_run: bool = False, grace: timedelta = garbage.GRACE) -> Report:
    """One pass: retention, then artifacts, then the SQLite file; audited when something was removed."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=retention_days)
    with sessions() as session:
        engine = session.get_bind()
        assert isinstance(engine, Engine)
    before = _sqlite_bytes(engine)
    with sessions() as session, session.begin():
        windows, notifications = purge(session, cutoff, dry_run=dry_run)
    with sessions() as session:
        facts = read_facts(session, root)
    plan = garbage.plan(facts, now, grace)
    deleter = store_files.Deleter(root)
    removing = list(plan.remove)
    if not dry_run:
        with sessions() as session, session.begin():
            marked = _mark_removed(session, [fact.id for fact in plan.remove], now) if plan.remove else set()
            if plan.revive:
                session.execute(update(ArtifactRow).where(ArtifactRow.id.in_(plan.revive)).values(removed_at=None)
                                .execution_options(synchronize_session=False))
        removing = [fact for fact in plan.remove if fact.id in marked]
        for fact in removing:
            deleter.remove(root / fact.sha256[:2] / fact.sha256)
        for entry in plan.orphans:
            deleter.remove(root / entry.name[:2] / entry.name)
        for entry in plan.trees:
            deleter.remove(root / ".trees" / entry.name)
        for entry in plan.scratch:
            deleter.remove(root / ".tmp" / entry.name)
    sizes = {entry.name: entry.size_bytes for entry in facts.files}
    report = Report(
        dry_run=dry_run, retention_days=retention_days, cutoff=cutoff, windows=windows, notifications=notifications,
        artifacts=tuple({"sha256": f.sha256, "format": f.format, "size_bytes": sizes.get(f.sha256, 0),
                         "owners": list(f.owners)} for f in removing),
        orphans=tuple(e.name for e in plan.orphans), trees=tuple(e.name for e in plan.trees),
        scratch=tuple(e.name for e in plan.scratch),
        files_bytes=sum(sizes.get(f.sha256, 0) for f in removing)
        + sum(e.size_bytes for e in (*plan.orphans, *plan.trees, *plan.scratch)),
        revived=len(plan.revive), missing=tuple(f.sha256 for f in plan.missing),
        trees_kept_for_jobs=plan.trees_kept_for_jobs, errors=tuple(deleter.errors), database_bytes_before=before,
    )
    if dry_run:
        return report
    if report.changed:
        with sessions() as session, session.begin():
            session.add(AuditEntryRow(actor=actor, action="gc", target_kind="store", target_id=str(root), before={},
                                      after={"sample_windows": windows, "webhook_notifications": notifications,
                                             "artifacts": [a["sha256"] for a in report.artifacts],
                                             "orphaned_files": len(report.orphans), "extracted_folders":
                                             len(report.trees), "temporary_files": len(report.scratch),
                                             "files_bytes": report.files_bytes}))
    if before is None:
        return report
    try:
        shrink_sqlite(engine)
    except OperationalError as exc:  # e.g. another process holds a long read: the next pass shrinks it
        reason = str(exc.orig).strip() if exc.orig is not None else str(exc)
        log.warning("gc could not shrink the SQLite file why=%s", reason)
        report = replace(report, errors=(*report.errors, f"the SQLite file was not shrunk: {reason}"))
    return replace(report, database_bytes_after=_sqlite_bytes(engine))
