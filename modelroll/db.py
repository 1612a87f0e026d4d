"""The database schema (SQLAlchemy 2 typed ORM) and engine/session construction.

Every change here needs an Alembic revision in `migrations/versions/`; the
test suite runs `alembic check` to catch drift.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import NullPool

from modelroll.settings import Settings

JsonType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that always reads back aware UTC: SQLite returns the stored UTC without a zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Named constraints keep future revisions portable: SQLite batch migrations can only drop a constraint by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dict[str, Any]: JsonType,
        list[Any]: JsonType,
        datetime: UTCDateTime(),
    }


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ArtifactRow(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16))  # onnx | torch | hf
    path: Mapped[str] = mapped_column(Text)  # relative to the store root
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(nullable=True)  # file deleted: no live variant uses it


class VariantRow(Base):
    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_variants_model_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(16))  # baseline | candidate
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"))
    source_artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("variants.id"), nullable=True)
    recipe: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(nullable=True)  # no longer servable; history keeps it


class ProductionRevisionRow(Base):
    """One change of what serves a model outside a rollout; the model's highest revision is what serves now.

    The unique (model, revision) pair is the optimistic lock: of two writers that read the same current
    revision, only one can insert the next.
    """

    __tablename__ = "production_revisions"
    __table_args__ = (UniqueConstraint("model_id", "revision", name="uq_production_revisions_model_revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per model
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id"))
    action: Mapped[str] = mapped_column(String(32))  # registered | promoted | rollback
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OptimizationJobRow(Base):
    __tablename__ = "optimization_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    baseline_variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id"))
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)  # techniques, gates, eval data
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queue_job_id: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class CandidateReportRow(Base):
    """One candidate of one job: every measured figure, each gate, the recipe, every try."""

    __tablename__ = "candidate_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("optimization_jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    variant_id: Mapped[int | None] = mapped_column(ForeignKey("variants.id"), nullable=True)
    recipe: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16))  # measured | failed
    error: Mapped[str] = mapped_column(Text, default="")
    baseline_figures: Mapped[dict[str, Any]] = mapped_column(default=dict)
    candidate_figures: Mapped[dict[str, Any]] = mapped_column(default=dict)
    gates: Mapped[dict[str, Any]] = mapped_column(default=dict)  # name -> {passed, value, threshold}
    passed: Mapped[bool] = mapped_column(Boolean, default=False)
    tries: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RolloutRow(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    baseline_variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id"))
    candidate_variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # metadata.name of the document that created it (`modelroll apply`): applying the document again finds it.
    name: Mapped[str | None] = mapped_column(String(63), unique=True, nullable=True)
    phase: Mapped[str] = mapped_column(String(16), index=True)
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    weights: Mapped[dict[str, Any]] = mapped_column(default=dict)  # variant -> pct
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the state machine's full state
    last_reason: Mapped[str] = mapped_column(Text, default="")
    # The latest look of the statistics (results, counts, looks); written without bumping `version`
    # so an operator's If-Match is not invalidated every reconcile tick.
    evaluation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}


class RolloutEventRow(Base):
    __tablename__ = "rollout_events"
    __table_args__ = (UniqueConstraint("rollout_id", "seq", name="uq_rollout_events_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per rollout: a duplicate transition cannot insert
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    from_phase: Mapped[str] = mapped_column(String(16), default="")
    to_phase: Mapped[str] = mapped_column(String(16), default="")
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    fencing_token: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditEntryRow(Base):
    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target_kind: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(128))
    before: Mapped[dict[str, Any]] = mapped_column(default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SampleWindowRow(Base):
    """Samples of one variant in one rollout step aggregated over one time window (decisions replay from these)."""

    __tablename__ = "sample_windows"
    __table_args__ = (Index("ix_sample_windows_rollout_step", "rollout_id", "step_index"),
                      Index("ix_sample_windows_rollout_updated", "rollout_id", "updated_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    variant: Mapped[str] = mapped_column(String(63))
    step_index: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column()
    window_end: Mapped[datetime] = mapped_column()
    requests: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    shadow_requests: Mapped[int] = mapped_column(Integer, default=0)
    labelled: Mapped[int] = mapped_column(Integer, default=0)
    correct: Mapped[int] = mapped_column(Integer, default=0)
    latency_sum_ms: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_sum_ms: Mapped[float] = mapped_column(Float, default=0.0)
    memory_bytes_max: Mapped[int] = mapped_column(BigInteger, default=0)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)  # raw latencies, memory readings, labels
    # The database's clock (one clock whichever controller writes): the controller re-reads only what changed.
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class WebhookOutboxRow(Base):
    """A notification written in the transaction of the transition it reports, then posted by any controller.

    A crash or restart between the decision and the delivery loses nothing: the row waits for the next sender.
    """

    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_webhook_outbox_due", "delivered_at", "failed_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # viewer | operator | admin
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)


class LeaderFenceRow(Base):
    """Highest fencing token that has written; a write with a smaller token is refused."""

    __tablename__ = "leader_fences"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[int] = mapped_column(BigInteger)


class SampleCursorRow(Base):
    """Last live-channel sample id folded into `sample_windows`, written in the same transaction."""

    __tablename__ = "sample_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_id: Mapped[str] = mapped_column(String(64))


def make_engine(settings: Settings) -> Engine:
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         connect_args={"connect_timeout": 5})


def make_null_pool_engine(url: str) -> Engine:
    return create_engine(url, poolclass=NullPool)


def make_session_factory(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)
