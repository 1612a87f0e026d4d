"""production_revisions (what serves each model, with its history), variants.retired_at, artifacts.removed_at.

Existing models get revision 1: the candidate of their newest promoted rollout (what their routers were serving
through that rollout's split), else their `baseline` variant.

Revision ID: 3e7a1c9d5b20
Revises: 9b3f6d2e1c07
Create Date: 2026-12-06 02:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3e7a1c9d5b20"
down_revision: str | Sequence[str] | None = "9b3f6d2e1c07"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "production_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_production_revisions_model_id_models",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"], name="fk_production_revisions_rollout_id_rollouts",
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["variant_id"], ["variants.id"], name="fk_production_revisions_variant_id_variants"),
        sa.PrimaryKeyConstraint("id", name="pk_production_revisions"),
        sa.UniqueConstraint("model_id", "revision", name="uq_production_revisions_model_revision"),
    )
    op.create_index("ix_production_revisions_model_id", "production_revisions", ["model_id"], unique=False)
    with op.batch_alter_table("variants") as batch:
        batch.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(sa.text("""
        INSERT INTO production_revisions (model_id, revision, variant_id, action, actor, reason, rollout_id, created_at)
        SELECT m.id, 1,
               COALESCE(
                   (SELECT r.candidate_variant_id FROM rollouts r
                     WHERE r.model_id = m.id AND r.phase = 'promoted' ORDER BY r.id DESC LIMIT 1),
                   (SELECT v.id FROM variants v WHERE v.model_id = m.id AND v.name = 'baseline'),
                   (SELECT MIN(v.id) FROM variants v WHERE v.model_id = m.id AND v.role = 'baseline')),
               'migrated', 'migration', 'what served when production revisions were introduced',
               (SELECT r.id FROM rollouts r
                 WHERE r.model_id = m.id AND r.phase = 'promoted' ORDER BY r.id DESC LIMIT 1),
               CURRENT_TIMESTAMP
          FROM models m
         WHERE EXISTS (SELECT 1 FROM variants v WHERE v.model_id = m.id)
    """))


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("removed_at")
    with op.batch_alter_table("variants") as batch:
        batch.drop_column("retired_at")
    op.drop_index("ix_production_revisions_model_id", table_name="production_revisions")
    op.drop_table("production_revisions")
