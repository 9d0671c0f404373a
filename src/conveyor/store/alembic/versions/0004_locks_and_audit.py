"""Environment locks in the database, the audit log, and which conveyor wrote the schema.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Locks move out of the agent's memory so that agents sharing one database (several hosts on one
PostgreSQL) exclude each other; the audit log is a hash chain (conveyor.core.audit);
conveyor_meta records the conveyor version that last upgraded the schema, so that an older
conveyor can say which version it should be upgraded to.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "environment_locks",
        sa.Column("app", sa.String(200), primary_key=True),
        sa.Column("environment", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("what", sa.Text(), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("app", sa.String(200), nullable=False),
        sa.Column("environment", sa.String(200), nullable=True),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_log_app_at", "audit_log", ["app", "at"])
    op.create_table(
        "conveyor_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("conveyor_meta")
    op.drop_index("ix_audit_log_app_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("environment_locks")
