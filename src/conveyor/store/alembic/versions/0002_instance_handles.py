"""Instances keep a runtime-neutral handle (JSON) instead of pid, pgid, port and start columns.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

A local process becomes {"runtime": "local", "ref": {"pid", "pgid", "proc_start", "log"},
"endpoints": [{"host": "127.0.0.1", "port"}], "started_at"}: the same identity (pid plus kernel
start time), so a restarted agent adopts the processes an older one started.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# conveyor 0.1 wrote service logs here, relative to the conveyor home.
_LOG = "logs/{environment}/{service}/{color}.log"


def _timestamp(value: object) -> float:
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
        return when.timestamp()
    if isinstance(value, str):
        return _timestamp(datetime.fromisoformat(value))
    return 0.0


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(
            sa.Column("runtime", sa.String(32), nullable=False, server_default="local")
        )
        batch.add_column(sa.Column("handle", sa.JSON(), nullable=True))
    bind = op.get_bind()
    home = _home(bind)
    rows = bind.execute(
        sa.text(
            "SELECT app, environment, service, color, pid, pgid, port, proc_start, started_at "
            "FROM instances"
        )
    ).mappings()
    for row in list(rows):
        ref: dict[str, object] = {}
        if row["pid"] is not None and row["proc_start"] is not None:
            ref = {
                "pid": row["pid"],
                "pgid": row["pgid"] if row["pgid"] is not None else row["pid"],
                "proc_start": row["proc_start"],
            }
            if home:
                ref["log"] = f"{home}/" + _LOG.format(**row)
        handle = {
            "runtime": "local",
            "ref": ref,
            "endpoints": [{"host": "127.0.0.1", "port": row["port"]}] if row["port"] else [],
            "started_at": _timestamp(row["started_at"]),
        }
        bind.execute(
            sa.text(
                "UPDATE instances SET handle = :handle WHERE app = :app AND "
                "environment = :environment AND service = :service AND color = :color"
            ),
            {
                "handle": json.dumps(handle),
                "app": row["app"],
                "environment": row["environment"],
                "service": row["service"],
                "color": row["color"],
            },
        )
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("handle", existing_type=sa.JSON(), nullable=False)
        batch.alter_column("runtime", existing_type=sa.String(32), server_default=None)
        for column in ("pid", "pgid", "port", "proc_start"):
            batch.drop_column(column)


def _home(bind: sa.engine.Connection) -> str:
    """The conveyor home of a SQLite state.db beside it; "" when it cannot be known (PostgreSQL)."""
    if bind.dialect.name != "sqlite":
        return ""
    database = bind.engine.url.database or ""
    if not database or database == ":memory:":
        return ""
    from pathlib import Path

    return str(Path(database).resolve().parent)


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("pgid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("proc_start", sa.BigInteger(), nullable=True))
    bind = op.get_bind()
    for row in list(bind.execute(sa.text("SELECT * FROM instances")).mappings()):
        handle = row["handle"]
        data = json.loads(handle) if isinstance(handle, str) else dict(handle or {})
        ref = data.get("ref", {})
        endpoints = data.get("endpoints", [])
        bind.execute(
            sa.text(
                "UPDATE instances SET pid = :pid, pgid = :pgid, port = :port, "
                "proc_start = :proc_start WHERE app = :app AND environment = :environment "
                "AND service = :service AND color = :color"
            ),
            {
                "pid": ref.get("pid"),
                "pgid": ref.get("pgid"),
                "proc_start": ref.get("proc_start"),
                "port": endpoints[0]["port"] if endpoints else None,
                "app": row["app"],
                "environment": row["environment"],
                "service": row["service"],
                "color": row["color"],
            },
        )
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("handle")
        batch.drop_column("runtime")
