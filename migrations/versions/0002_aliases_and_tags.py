"""Aliases with their move history, and free-form version tags.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
    op.execute("UPDATE model_versions SET tags = '{}'")
    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("tags", existing_type=sa.JSON(), nullable=False)
    op.create_table(
        "model_aliases",
        sa.Column("model_name", sa.String(200),
                  sa.ForeignKey("registered_models.name", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("alias", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(200),
                  sa.ForeignKey("registered_models.name", ondelete="CASCADE"), nullable=False),
        sa.Column("alias", sa.String(100), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("moved_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
    )
    op.create_index("ix_alias_history_model_name", "alias_history", ["model_name"])


def downgrade() -> None:
    op.drop_table("alias_history")  # drops its index too (MariaDB refuses to drop it first)
    op.drop_table("model_aliases")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("tags")
