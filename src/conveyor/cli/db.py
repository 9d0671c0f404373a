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

from conveyor.cli.common import Command, EnvReq, JsonOpt, app, project, size_text
from conveyor.cli.output import console, emit_json, fail, stderr

db_app = typer.Typer(
    help="Back up the state database (history, releases, what runs where).\n\n"
    "Restore: stop the agent with `conveyor agent stop --keep-running`, copy the backup over "
    ".conveyor/state.db (PostgreSQL: load the .sql file with psql into an empty database), then "
    "`conveyor agent start` and `conveyor doctor`. See README, Running on a server.\n\n"
    "`db backups --env E` and `db restore BACKUP --env E`: the app database's backups, taken "
    "before migrating (docs/migrations.md).\n\n"
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


# --- the app database's backups ([migrations] backup; docs/migrations.md) ---------------------


@db_app.command("backups", cls=Command)
def backups(env: EnvReq, json_out: JsonOpt = False) -> None:
    """List the backups of an environment's app database, newest first (taken before migrating
    when [migrations] backup = true; kept under .conveyor/backups/ENV/).

    Example:

        conveyor db backups --env production
    """
    from conveyor.migrations import backups as app_backups

    proj = project()
    proj.checked(env)
    found = app_backups.listed(app_backups.directory(proj.paths.home, env))
    if json_out:
        emit_json({"environment": env, "backups": [b.to_json() for b in found]})
        return
    if not found:
        console.print(
            f"no backups of {env}'s database in {app_backups.directory(proj.paths.home, env)}"
        )
        return
    from rich.table import Table

    table = Table()
    for column in ("backup", "taken", "for", "live then", "versions", "size"):
        table.add_column(column)
    for b in found:
        table.add_row(
            b.name,
            f"{b.at:%Y-%m-%d %H:%M:%S}",
            f"deployment {b.deployment_id}" if b.deployment_id else "by hand",
            b.live_version or "-",
            str(max(b.versions)) if b.versions else "none",
            size_text(b.bytes),
        )
    console.print(table)


@db_app.command("restore", cls=Command)
def restore(
    backup: Annotated[
        str, typer.Argument(metavar="BACKUP", help="A name from `conveyor db backups`.")
    ],
    env: EnvReq,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Restore even though a newer release is live.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Put an environment's app database back as a backup has it (pg_restore --clean
    --if-exists, in one transaction: all of it or nothing). Refuses while a release other than
    the one live when the backup was taken is live, unless --force.

    Example:

        conveyor db restore 20261206T011500Z-d12 --env production
    """
    from conveyor.cli.migrate import confirm, context, failed, say
    from conveyor.core.migrations import restore_refusal
    from conveyor.migrations import backups as app_backups
    from conveyor.migrations.runner import MigrationError
    from conveyor.migrations.steps import live_release

    ctx = context(env)
    folder = app_backups.directory(ctx.proj.paths.home, env)
    chosen = app_backups.find(folder, backup)
    if chosen is None:
        fail(f"no backup {backup!r} of {env} in {folder} (see `conveyor db backups --env {env}`)")
    store = ctx.proj.store()
    try:
        live = live_release(store, ctx.app, env)
    finally:
        store.close()
    refusal = restore_refusal(chosen.live_version, live)
    if refusal and not force:
        fail(f"refused: {refusal} (pass --force to restore anyway)", 1)
    confirm(
        f"Replace {ctx.where} with backup {chosen.name}? Changes since {chosen.at:%Y-%m-%d %H:%M:%S} UTC are lost.",
        f"this replaces {ctx.where} with backup {chosen.name}",
        yes,
    )
    try:
        seconds = app_backups.restore(chosen, ctx.url, say(json_out))
    except MigrationError as exc:
        failed(exc)
    if json_out:
        emit_json(
            {
                "environment": env,
                "database": ctx.where,
                "backup": chosen.to_json(),
                "seconds": round(seconds, 3),
            }
        )
        return
    console.print(f"[green]✓[/] restored {chosen.name} into {ctx.where} ({seconds:.2f}s)")
