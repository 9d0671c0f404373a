"""`conveyor migrate status|up|down|contract --env E`: the app database's migrations by hand.

The files are read from the project's checkout ([migrations] dir beside conveyor.toml); what a
deploy does with them (expand before the switch, contract after the standby window) is in
docs/migrations.md. Changes made here are recorded in the state store like a deployment's, with
no deployment id and the user as actor.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from conveyor.cli.common import Command, EnvReq, JsonOpt, Project, acting_user, app, project
from conveyor.cli.output import console, emit_json, fail, stderr

if TYPE_CHECKING:
    from conveyor.config import ResolvedEnvironment
    from conveyor.config.migrations import MigrationsConfig
    from conveyor.migrations.steps import Target

migrate_app = typer.Typer(
    help="Apply, undo and list the app database's migrations ([migrations] in conveyor.toml; "
    "docs/migrations.md).\n\nExample:\n\n    conveyor migrate status --env staging",
    no_args_is_help=True,
)
app.add_typer(migrate_app, name="migrate")

ToOpt = Annotated[
    int | None,
    typer.Option("--to", metavar="VERSION", help="Stop at this version (down: keep it applied)."),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@dataclass(frozen=True)
class Context:
    proj: Project
    app: str
    environment: str
    cfg: MigrationsConfig
    url: str
    where: str  # the URL with its password masked

    @property
    def tree(self) -> Path:
        return self.proj.dir


def context(env: str) -> Context:
    """The project, its environment's [migrations] and database URL; exit 2 when not set up."""
    from conveyor.migrations.database import NoDatabase, database_url, masked

    proj = project()
    config = proj.config()
    resolved = proj.environment(config, env)
    if resolved.migrations is None:
        fail(f"{proj.config_path.name} has no [migrations] table: nothing to migrate")
    try:
        # [migrations] database_url, else the secret named by database_url_secret (the
        # environment's providers, audited), else conveyor's environment variable of that name.
        url = database_url(resolved.migrations, env, _secret_lookup(proj, resolved))
    except NoDatabase as exc:
        fail(str(exc))
    return Context(proj, resolved.app, env, resolved.migrations, url, masked(url))


def _secret_lookup(proj: Project, resolved: ResolvedEnvironment) -> Any:
    """A lookup of one secret through the environment's providers (None when nobody has it)."""
    cfg = resolved.migrations
    if cfg is None or cfg.database_url:
        return None

    def lookup(name: str, environment: str) -> str | None:
        import asyncio

        from conveyor.secrets.base import SecretError
        from conveyor.secrets.resolve import Resolver

        store = proj.store()
        try:
            resolver = Resolver(
                store, resolved.app, resolved.secrets, proj.paths.home, acting_user(proj)
            )
            found = asyncio.run(resolver.check(environment, [name], purpose="migrate"))
        except SecretError as exc:
            fail(str(exc), 1)
        finally:
            store.close()
        value = found.get(name)
        return value.value if value is not None else None

    return lookup


def failed(exc: Exception) -> NoReturn:
    """Exit 2 for a bad migration file (bad input), 1 for everything refused or failed."""
    from conveyor.migrations.goose import MigrationFileError

    fail(str(exc), 2 if isinstance(exc, MigrationFileError) else 1)


def say(json_out: bool) -> Any:
    def progress(line: str) -> None:
        if not json_out:
            stderr.print(line, markup=False, highlight=False, soft_wrap=True)

    return progress


def confirm(question: str, refusal: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{refusal}: pass --yes")
    typer.confirm(question, abort=True)


def target(ctx: Context, store: Any) -> Target:
    import getpass

    from conveyor.migrations.steps import Target

    return Target(ctx.app, ctx.environment, None, store, getpass.getuser(), ctx.cfg.lock_wait)


@migrate_app.command("status", cls=Command)
def status(env: EnvReq, json_out: JsonOpt = False) -> None:
    """List the migrations: applied (when, by which deployment) or pending, expand or contract.

    Example:

        conveyor migrate status --env production
    """
    from conveyor.migrations import steps
    from conveyor.migrations.runner import MigrationError
    from conveyor.store.schema_changes import applied_by, changes

    ctx = context(env)
    if ctx.cfg.command is not None:
        fail(f"migrations are delegated to {ctx.cfg.command!r}: ask that tool for its status")
    try:
        files = steps.load(ctx.tree, ctx.cfg)
        done = steps.applied(ctx.url)
    except MigrationError as exc:
        failed(exc)
    store = ctx.proj.store()
    try:
        who = applied_by(changes(store, ctx.app, env))
    finally:
        store.close()
    rows: list[dict[str, Any]] = []
    for m in files:
        change = who.get(m.version)
        rows.append(
            {
                "version": m.version,
                "name": m.name,
                "kind": m.kind,
                "state": "applied" if m.version in done else "pending",
                "applied_at": done[m.version].isoformat() if m.version in done else None,
                "deployment_id": change.deployment_id if change else None,
                "actor": change.actor if change else None,
                "path": m.path,
            }
        )
    known = {m.version for m in files}
    for version in sorted(set(done) - known):
        rows.append(
            {
                "version": version,
                "name": None,
                "kind": None,
                "state": "applied, file missing",
                "applied_at": done[version].isoformat(),
                "deployment_id": None,
                "actor": None,
                "path": None,
            }
        )
    rows.sort(key=lambda r: int(r["version"]))
    if json_out:
        emit_json({"environment": env, "database": ctx.where, "migrations": rows})
        return
    from rich.table import Table

    table = Table(title=f"{ctx.app}/{env}: {ctx.where}", title_justify="left")
    for column in ("version", "name", "kind", "state", "applied", "by"):
        table.add_column(column)
    for r in rows:
        by = f"deployment {r['deployment_id']}" if r["deployment_id"] else (r["actor"] or "")
        applied = (r["applied_at"] or "")[:19].replace("T", " ")
        state = r["state"] if r["state"] != "pending" else "[yellow]pending[/]"
        table.add_row(str(r["version"]), r["name"] or "?", r["kind"] or "", state, applied, by)
    console.print(table)
    pending = sum(r["state"] == "pending" for r in rows)
    console.print(f"{pending} pending" if pending else "[green]✓[/] up to date")


def _apply(ctx: Context, to: int | None, contract: bool, json_out: bool) -> None:
    from conveyor.migrations import steps
    from conveyor.migrations.runner import MigrationError

    progress = say(json_out)
    store = ctx.proj.store()
    try:
        who = target(ctx, store)
        if ctx.cfg.command is not None:
            result = steps.run_delegated(ctx.tree, ctx.cfg, ctx.url, progress)
            if json_out:
                emit_json({"command": result.command, "seconds": round(result.seconds, 3)})
            else:
                console.print(f"[green]✓[/] {result.command!r} done in {result.seconds:.2f}s")
            return
        todo = steps.pending(ctx.tree, ctx.cfg, ctx.url, to)
        chosen = todo.expand + todo.contract if contract else todo.expand
        backup = None
        if chosen and ctx.cfg.backup:
            backup = steps.take_backup(ctx.cfg, ctx.url, ctx.proj.paths.home, who, progress)
        applied = steps.apply(chosen, ctx.url, who, progress)
    except MigrationError as exc:
        failed(exc)
    finally:
        store.close()
    held = [] if contract else list(todo.contract)
    if json_out:
        emit_json(
            {
                "environment": ctx.environment,
                "database": ctx.where,
                "applied": [a.to_json() for a in applied],
                "held": [{"version": m.version, "name": m.name} for m in held],
                "backup": backup.to_json() if backup else None,
                "allowances": [a.to_json() for a in todo.allowances],
            }
        )
        return
    for a in applied:
        console.print(f"[green]✓[/] {a.version} {a.name} ({a.kind}) {a.seconds:.2f}s")
    if not applied:
        console.print(f"[green]✓[/] {ctx.where} is up to date")
    if held:
        names = ", ".join(m.label for m in held)
        console.print(
            f"held (contract): {names}; apply them once no old release runs: "
            f"conveyor migrate contract --env {ctx.environment}"
        )


@migrate_app.command("up", cls=Command)
def up(env: EnvReq, to: ToOpt = None, json_out: JsonOpt = False) -> None:
    """Apply the pending expand migrations (up to --to VERSION); contract migrations are held
    (see `conveyor migrate contract`). A backup is taken first with [migrations] backup = true.

    Example:

        conveyor migrate up --env staging --to 20240101120000
    """
    _apply(context(env), to, contract=False, json_out=json_out)


@migrate_app.command("contract", cls=Command)
def contract(env: EnvReq, yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """Apply the held contract migrations now (and any expand migration still pending).

    Only safe once no old release runs: a switch back would meet the contracted schema.

    Example:

        conveyor migrate contract --env production --yes
    """
    ctx = context(env)
    confirm(
        f"Apply contract migrations to {ctx.where}? The old release cannot run on the result.",
        "contract migrations change what an old release can run on",
        yes,
    )
    _apply(ctx, None, contract=True, json_out=json_out)


@migrate_app.command("down", cls=Command)
def down(
    env: EnvReq,
    to: ToOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run Down sections that drop or delete data too.")
    ] = False,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Undo the newest applied migration (or every one above --to VERSION; --to 0: all) by its
    Down section, newest first. Refuses a migration without one, and (without --force) a Down
    section that drops or deletes data.

    Example:

        conveyor migrate down --env staging --to 3 --yes
    """
    from conveyor.migrations import steps
    from conveyor.migrations.runner import MigrationError

    ctx = context(env)
    what = f"every migration above {to}" if to is not None else "the newest migration"
    confirm(f"Undo {what} in {ctx.where}?", f"this undoes {what} in {ctx.where}", yes)
    progress = say(json_out)
    store = ctx.proj.store()
    try:
        who = target(ctx, store)
        if ctx.cfg.command is not None:
            result = steps.run_delegated(ctx.tree, ctx.cfg, ctx.url, progress, "down")
            undone: list[Any] = []
            if json_out:
                emit_json({"command": result.command, "seconds": round(result.seconds, 3)})
            else:
                console.print(f"[green]✓[/] {result.command!r} done in {result.seconds:.2f}s")
            return
        undone = steps.down(ctx.tree, ctx.cfg, ctx.url, who, progress, to=to, force=force)
    except MigrationError as exc:
        failed(exc)
    finally:
        store.close()
    if json_out:
        emit_json(
            {
                "environment": env,
                "database": ctx.where,
                "undone": [a.to_json() for a in undone],
            }
        )
        return
    for a in undone:
        console.print(f"[green]✓[/] undid {a.version} {a.name} {a.seconds:.2f}s")
    if not undone:
        console.print("nothing to undo")
