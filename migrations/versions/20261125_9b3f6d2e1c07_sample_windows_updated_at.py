"""sample_windows.updated_at (the database's clock), so the controller re-reads only the windows that changed.

Revision ID: 9b3f6d2e1c07
Revises: 5c1e0b7d9a42
Create Date: 2026-11-25 15:45:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9b3f6d2e1c07"
down_revision: str | Sequence[str] | None = "5c1e0b7d9a42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    column = sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)
    if op.get_bind().dialect.name == "sqlite":  # SQLite adds no column with a non-constant default: copy the table
        with op.batch_alter_table("sample_windows", recreate="always") as batch:
            batch.add_column(column)
    else:
        op.add_column("sample_windows", column)
    op.create_index("ix_sample_windows_rollout_updated", "sample_windows", ["rollout_id", "updated_at"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_sample_windows_rollout_updated", table_name="sample_windows")
    with op.batch_alter_table("sample_windows") as batch:
        batch.drop_column("updated_at")
