"""`conveyor db backup`: a consistent copy of the state database, while the agent runs.
`conveyor db upgrade`: the pending schema migrations, applied on purpose (every command and the
agent also upgrade an older schema when they open it); a schema newer than this conveyor knows
is never touched, and the error names the conveyor version that wrote it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

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


@db_app.command("upgrade", cls=Command)
def upgrade(json_out: JsonOpt = False) -> None:
    """Apply the pending schema migrations (Alembic) to the state database.

    Example:

        CONVEYOR_DATABASE_URL=postgresql://conveyor@db.internal/conveyor conveyor db upgrade
    """
    from conveyor.store.db import (
        Store,
        StoreError,
        database_url,
        normalize_url,
        redacted_url,
        schema_state,
    )

    proj = project()
    proj.paths.ensure()
    url = database_url(proj.paths.home, proj.config_path)
    where = redacted_url(url)
    try:
        from sqlalchemy import create_engine

        engine = create_engine(normalize_url(url))
        try:
            before = schema_state(engine)
        finally:
            engine.dispose()
        Store.open(url).close()
        engine = create_engine(normalize_url(url))
        try:
            after = schema_state(engine)
        finally:
            engine.dispose()
    except StoreError as exc:
        fail(str(exc), 1)
    except Exception as exc:  # unreachable server, bad URL: one line, the URL redacted
        fail(f"cannot open the database {where}: {exc.__class__.__name__}", 1)

    def shown(revisions: frozenset[str]) -> str:
        return ", ".join(sorted(revisions)) or "empty"

    result: dict[str, Any] = {
        "exit": 0,
        "database": where,
        "before": sorted(before.revisions),
        "after": sorted(after.revisions),
        "upgraded": before.revisions != after.revisions,
        "writer": after.writer,
    }
    if json_out:
        emit_json(result)
    elif result["upgraded"]:
        console.print(
            f"[green]✓[/] upgraded {where} from {shown(before.revisions)} "
            f"to {shown(after.revisions)}"
        )
    else:
        console.print(f"[green]✓[/] {where} is up to date ({shown(after.revisions)})")
