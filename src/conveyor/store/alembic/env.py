"""Alembic environment for conveyor's schema.

Migrations only ever run through `Store.open()`, which hands over a connection that is already
inside a transaction holding the migration lock, so two processes never migrate at once.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from conveyor.store.models import Base

# Our own version table, so a PostgreSQL database shared with another Alembic-managed
# application does not mix up the two revision histories.
VERSION_TABLE = "conveyor_alembic_version"


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things: later migrations use batch mode there.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("conveyor migrations run online only, through Store.open()")

_connection = context.config.attributes.get("connection")
if not isinstance(_connection, Connection):
    raise RuntimeError("conveyor migrations run through Store.open(), which passes a connection")
run_migrations(_connection)
