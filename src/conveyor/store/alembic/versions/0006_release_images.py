"""The image each container service of a release runs (conveyor.images).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "release_images",
        sa.Column("app", sa.String(200), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("service", sa.String(200), primary_key=True),
        sa.Column("image", sa.String(300), nullable=False),
        sa.Column("image_id", sa.String(100), nullable=False),
        sa.Column("built", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("release_images")
