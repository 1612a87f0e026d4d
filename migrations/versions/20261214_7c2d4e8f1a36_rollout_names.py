"""rollouts.name: the metadata.name of the declarative document that created a rollout (unique, optional).

Revision ID: 7c2d4e8f1a36
Revises: 3e7a1c9d5b20
Create Date: 2026-12-14 09:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c2d4e8f1a36"
down_revision: str | Sequence[str] | None = "3e7a1c9d5b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("name", sa.String(length=63), nullable=True))
        batch.create_unique_constraint("uq_rollouts_name", ["name"])


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_constraint("uq_rollouts_name", type_="unique")
        batch.drop_column("name")
