"""Secrets: every version of every secret, encrypted; the key check; the break-glass cache.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Values are AES-256-GCM ciphertexts (conveyor.secrets.crypto); the master key itself is never
stored here, only a check value that tells a wrong key from a damaged value.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "secret_keyring",
        sa.Column("app", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("salt", sa.String(64), nullable=True),
        sa.Column("check", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "secret_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("app", sa.String(200), nullable=False),
        sa.Column("environment", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=True),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("removed", sa.Boolean(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "app", "environment", "name", "version", name="uq_secret_versions_slot"
        ),
    )
    op.create_table(
        "secret_cache",
        sa.Column("app", sa.String(200), primary_key=True),
        sa.Column("environment", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("provider", sa.String(32), primary_key=True),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("secret_cache")
    op.drop_table("secret_versions")
    op.drop_table("secret_keyring")
