"""The HTTP API (issue 14): deploys waiting for approval (the approvals inbox).

Revision ID: 0009_api
Revises: 0008_access
Create Date: 2026-12-06

A deploy asked for through the API and refused only because the environment's approvals are not
met is kept here until it is deployed or rejected (conveyor.store.requests).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009_api"
down_revision: str | None = "0008_access"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "deployment_requests",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("app", sa.String(200), nullable=False),
        sa.Column("environment", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("token_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_deployment_requests_app_state",
        "deployment_requests",
        ["app", "state", "environment"],
    )


def downgrade() -> None:
    op.drop_index("ix_deployment_requests_app_state", table_name="deployment_requests")
    op.drop_table("deployment_requests")
