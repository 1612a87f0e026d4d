"""Initial schema: every table of modelroll/db.py.

Revision ID: 085f414ae2e6
Revises: (none)
Create Date: 2026-11-25 09:21:03+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "085f414ae2e6"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere; the same type as modelroll.db.JsonType.
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.UniqueConstraint("sha256", name=op.f("uq_artifacts_sha256")),
    )
    op.create_table(
        "audit_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_kind", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=128), nullable=False),
        sa.Column("before", JSON_DOCUMENT, nullable=False),
        sa.Column("after", JSON_DOCUMENT, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entries")),
    )
    op.create_index(op.f("ix_audit_entries_ts"), "audit_entries", ["ts"], unique=False)
    op.create_table(
        "leader_fences",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leader_fences")),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_table(
        "sample_cursors",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("last_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sample_cursors")),
    )
    op.create_table(
        "variants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("artifact_id", sa.Integer(), nullable=False),
        sa.Column("source_artifact_id", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("recipe", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"], name=op.f("fk_variants_artifact_id_artifacts")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_variants_model_id_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["parent_id"], ["variants.id"], name=op.f("fk_variants_parent_id_variants")),
        sa.ForeignKeyConstraint(
            ["source_artifact_id"], ["artifacts.id"], name=op.f("fk_variants_source_artifact_id_artifacts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_variants")),
        sa.UniqueConstraint("model_id", "name", name="uq_variants_model_name"),
    )
    op.create_index(op.f("ix_variants_model_id"), "variants", ["model_id"], unique=False)
    op.create_table(
        "optimization_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("baseline_variant_id", sa.Integer(), nullable=False),
        sa.Column("request", JSON_DOCUMENT, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("queue_job_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["baseline_variant_id"], ["variants.id"], name=op.f("fk_optimization_jobs_baseline_variant_id_variants")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_optimization_jobs_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optimization_jobs")),
    )
    op.create_index(op.f("ix_optimization_jobs_model_id"), "optimization_jobs", ["model_id"], unique=False)
    op.create_index(op.f("ix_optimization_jobs_status"), "optimization_jobs", ["status"], unique=False)
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("baseline_variant_id", sa.Integer(), nullable=False),
        sa.Column("candidate_variant_id", sa.Integer(), nullable=False),
        sa.Column("spec", JSON_DOCUMENT, nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("weights", JSON_DOCUMENT, nullable=False),
        sa.Column("state", JSON_DOCUMENT, nullable=False),
        sa.Column("last_reason", sa.Text(), nullable=False),
        sa.Column("evaluation", JSON_DOCUMENT, nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["baseline_variant_id"], ["variants.id"], name=op.f("fk_rollouts_baseline_variant_id_variants")
        ),
        sa.ForeignKeyConstraint(
            ["candidate_variant_id"], ["variants.id"], name=op.f("fk_rollouts_candidate_variant_id_variants")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_rollouts_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(op.f("ix_rollouts_model_id"), "rollouts", ["model_id"], unique=False)
    op.create_index(op.f("ix_rollouts_phase"), "rollouts", ["phase"], unique=False)
    op.create_table(
        "candidate_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=True),
        sa.Column("recipe", JSON_DOCUMENT, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("baseline_figures", JSON_DOCUMENT, nullable=False),
        sa.Column("candidate_figures", JSON_DOCUMENT, nullable=False),
        sa.Column("gates", JSON_DOCUMENT, nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("tries", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["optimization_jobs.id"],
            name=op.f("fk_candidate_reports_job_id_optimization_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["variant_id"], ["variants.id"], name=op.f("fk_candidate_reports_variant_id_variants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidate_reports")),
    )
    op.create_index(op.f("ix_candidate_reports_job_id"), "candidate_reports", ["job_id"], unique=False)
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("from_phase", sa.String(length=16), nullable=False),
        sa.Column("to_phase", sa.String(length=16), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("evidence", JSON_DOCUMENT, nullable=False),
        sa.Column("fencing_token", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_events_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_events")),
        sa.UniqueConstraint("rollout_id", "seq", name="uq_rollout_events_seq"),
    )
    op.create_index(op.f("ix_rollout_events_rollout_id"), "rollout_events", ["rollout_id"], unique=False)
    op.create_table(
        "sample_windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=63), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("shadow_requests", sa.Integer(), nullable=False),
        sa.Column("labelled", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Integer(), nullable=False),
        sa.Column("latency_sum_ms", sa.Float(), nullable=False),
        sa.Column("cpu_sum_ms", sa.Float(), nullable=False),
        sa.Column("memory_bytes_max", sa.BigInteger(), nullable=False),
        sa.Column("data", JSON_DOCUMENT, nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_sample_windows_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sample_windows")),
    )
    op.create_index("ix_sample_windows_rollout_step", "sample_windows", ["rollout_id", "step_index"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_sample_windows_rollout_step", table_name="sample_windows")
    op.drop_table("sample_windows")
    op.drop_index(op.f("ix_rollout_events_rollout_id"), table_name="rollout_events")
    op.drop_table("rollout_events")
    op.drop_index(op.f("ix_candidate_reports_job_id"), table_name="candidate_reports")
    op.drop_table("candidate_reports")
    op.drop_index(op.f("ix_rollouts_phase"), table_name="rollouts")
    op.drop_index(op.f("ix_rollouts_model_id"), table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_index(op.f("ix_optimization_jobs_status"), table_name="optimization_jobs")
    op.drop_index(op.f("ix_optimization_jobs_model_id"), table_name="optimization_jobs")
    op.drop_table("optimization_jobs")
    op.drop_index(op.f("ix_variants_model_id"), table_name="variants")
    op.drop_table("variants")
    op.drop_table("sample_cursors")
    op.drop_table("models")
    op.drop_table("leader_fences")
    op.drop_index(op.f("ix_audit_entries_ts"), table_name="audit_entries")
    op.drop_table("audit_entries")
    op.drop_table("artifacts")
    op.drop_table("api_tokens")
