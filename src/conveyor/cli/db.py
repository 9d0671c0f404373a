"""`conveyor db backup`: a consistent copy of the state database, while the agent runs."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli.common import Command, JsonOpt, app, project, size_text
from conveyor.cli.output import console, emit_json, fail, stderr

db_app = typer.Typer(
    help="Back up the state database (history, releases, what runs where).\n\n"
    "Restore: stop the agent with `conveyor agent stop --keep-running`, copy the backup over "
    ".conveyor/state.db (PostgreSQL: load the .sql file with psql into an empty database), then "
    "`conveyor agent start` and `conveyor doctor`. See README, Running on a server.\n\n"
    "Example:\n\n    conveyor db backup /var/backups/shop-state.db",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")


@db_app.command("backup", cls=Command)
def backup(
    path: Annotated[
        Path | None,
        typer.Argument(
            metavar="[PATH]",
            help="Where to write it (default: .conveyor/backups/state-<UTC time>.db, or .sql "
            "for PostgreSQL). An existing file is not overwritten.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy the state database consistently, while the agent runs and writes: SQLite's online
    backup, or pg_dump for PostgreSQL. The agent also takes one a day by itself
    ([agent] backup_every, backup_keep).

    Example:

        conveyor db backup /var/backups/shop-state.db
    """
    from conveyor.store.backup import suffix
    from conveyor.store.db import Store, database_url

    proj = project()
    proj.paths.ensure()
    store = Store.open(database_url(proj.paths.home))
    try:
        if path is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            path = proj.paths.home / "backups" / f"state-{stamp}{suffix(store.dialect)}"
        target = path.resolve()
        if target.exists():
            fail(f"{target} already exists: name another file, or remove it first")
        if not json_out:
            stderr.print(f"backing up {store.where} to {target}…", markup=False, soft_wrap=True)
        started = time.monotonic()
        size = store.backup(target)
        took = time.monotonic() - started
        where = store.where
    finally:
        store.close()
    if json_out:
        emit_json({"database": where, "path": str(target), "bytes": size, "seconds": took})
        return
    console.print(
        f"backed up {where} to {target} ({size_text(size)}, {took:.2f}s)",
        markup=False,
        soft_wrap=True,
    )
