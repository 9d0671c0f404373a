"""Which deployment changed the app's database schema.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

One row per migration applied (up) or undone (down) in an environment's app database, with the
deployment that did it (NULL for `conveyor migrate` by hand) and how long it took. The applied
versions themselves live in the app database (goose_db_version); this is the history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "schema_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("app", sa.String(200), nullable=False),
        sa.Column("environment", sa.String(200), nullable=False),
        sa.Column(
            "deployment_id",
            sa.Integer(),
            sa.ForeignKey("deployments.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_schema_changes_app_env", "schema_changes", ["app", "environment", "id"])


def downgrade() -> None:
    op.drop_index("ix_schema_changes_app_env", table_name="schema_changes")
    op.drop_table("schema_changes")
