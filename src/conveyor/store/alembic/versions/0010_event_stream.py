"""The event stream (issue 14): withdrawals of approvals, in the order they were written.

Revision ID: 0010_event_stream
Revises: 0009_api
Create Date: 2026-12-06

`GET /api/v1/events` reads what is new by id; a withdrawal only stamped its approval row
(`withdrawn_at`), which no id orders. Each withdrawal is now also a row of
`approval_withdrawals`; the ones made before this migration are copied there, oldest first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010_event_stream"
down_revision: str | None = "0009_api"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "approval_withdrawals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "approval_id",
            sa.Integer(),
            sa.ForeignKey("approvals.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("app", sa.String(200), nullable=False),
        sa.Column("withdrawn_by", sa.String(200), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "INSERT INTO approval_withdrawals (approval_id, app, withdrawn_by, withdrawn_at) "
        "SELECT id, app, COALESCE(withdrawn_by, ''), withdrawn_at FROM approvals "
        "WHERE withdrawn_at IS NOT NULL ORDER BY withdrawn_at, id"
    )


def downgrade() -> None:
    op.drop_table("approval_withdrawals")
