"""What a deployment (and `conveyor migrate`) calls to migrate an environment's app database.

The engine's sequence (docs/migrations.md):

    cfg = env.migrations                       # ResolvedEnvironment.migrations, None: no step
    url = database_url(cfg, env.name, lookup)  # conveyor.migrations.database
    target = Target(app, env.name, deployment_id, store, actor, cfg.lock_wait)
    todo = pending(tree, cfg, url)             # after the release is staged, before it starts
    if cfg.backup and not todo.empty:
        take_backup(cfg, url, home, target, progress)
    applied = apply(todo.expand, url, target, progress)          # before the switch
    ...                                                            # switch, bake, standby window
    if contract_due(now, standby_until, old_running).run:         # conveyor.core.migrations
        apply(todo.contract, url, target, progress)  # (or apply_contract(tree, cfg, url, ...))
    # rollback --migrations down:
    down(tree, cfg, url, target, progress, versions=deployment_versions(store, app, env, id))

`target` (a Target) says whose migrations these are: the app, the environment, the deployment
id that is recorded with every version in the state store's schema_changes, and the store.
With `[migrations] command` (delegation) there is no plan: `pending()` returns
`Pending(command=...)` and `run_delegated(tree, cfg, url, progress)` runs the tool.

Every function blocks (psycopg, pg_dump): the engine calls them in a thread
(`asyncio.to_thread`), and `progress` is then called from that thread. Errors are
MigrationError subclasses whose message is ready for the operator: MigrationFileError (a bad
file: exit 2), LintRefused (exit 1, nothing applied), MigrationFailed (file:line and
PostgreSQL's message; the database as before the failing migration), LockTimeout,
DatabaseUnavailable, CommandFailed, BackupError, DownRefused.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.config.migrations import MigrationsConfig
from conveyor.core.migrations import (
    Migration,
    Plan,
    PlanError,
    destructive,
    down_plan,
    plan,
    select,
)
from conveyor.migrations import backups, goose, runner
from conveyor.migrations.database import masked
from conveyor.migrations.delegate import CommandResult, run_command
from conveyor.migrations.runner import Applied, MigrationError, MigrationFailed

if TYPE_CHECKING:
    from conveyor.store.db import Store

Progress = Callable[[str], None]


class LintRefused(MigrationError):
    """A pending migration has an error-level lint finding that no `conveyor:allow` allows."""


class DownRefused(MigrationError):
    """A Down section cannot or may not run (none written, or destructive without force)."""


@dataclass(frozen=True)
class Allowance:
    """A lint finding allowed in the file (`-- conveyor:allow RULE because ...`): for the audit."""

    rule: str
    path: str
    line: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "path": self.path, "line": self.line, "reason": self.reason}


@dataclass(frozen=True)
class Pending:
    expand: tuple[Migration, ...] = ()
    contract: tuple[Migration, ...] = ()
    missing: tuple[int, ...] = ()  # applied versions without a file (shown, never touched)
    allowances: tuple[Allowance, ...] = ()
    command: str | None = None  # delegated: the tool decides what is pending
    linted: bool = False  # False: the linter could not run (pglast not installed)

    @property
    def empty(self) -> bool:
        return self.command is None and not self.expand and not self.contract


@dataclass(frozen=True)
class Target:
    """Whose migrations: recorded with each version in the state store (schema_changes)."""

    app: str
    environment: str
    deployment_id: int | None = None  # None: `conveyor migrate` by hand
    store: Store | None = None
    actor: str = "conveyor"
    lock_wait: float = 300.0


def migrations_dir(tree: Path, cfg: MigrationsConfig) -> Path:
    return tree / cfg.dir


def load(tree: Path, cfg: MigrationsConfig) -> list[Migration]:
    """The release's migration files (MigrationFileError for a bad one)."""
    return goose.load(migrations_dir(tree, cfg), shown_from=tree)


def applied(url: str) -> dict[int, datetime]:
    """Applied version -> when, read from goose_db_version (empty when it does not exist)."""
    conn = runner.connect(url, masked(url), "conveyor migrate status")
    with conn:
        return runner.applied_versions(conn)


def pending(tree: Path, cfg: MigrationsConfig, url: str, to: int | None = None) -> Pending:
    """The release's pending migrations (expand ones, contract ones), linted.

    Raises MigrationFileError for a bad file and LintRefused for an error-level finding that is
    not allowed; nothing is applied then.
    """
    if cfg.command is not None:
        return Pending(command=cfg.command)
    migrations = load(tree, cfg)
    todo: Plan = plan(migrations, applied(url), to)
    allowances, linted = lint(migrations, todo.all())
    return Pending(todo.expand, todo.contract, todo.missing, tuple(allowances), None, linted)


def _linter() -> Any | None:
    """conveyor.migrations.lint when it can run (it needs pglast: the lint extra), else None."""
    try:
        linter = importlib.import_module("conveyor.migrations.lint")
    except ImportError:
        return None
    available = getattr(linter, "available", None)
    return linter if available is not None and available() else None


def lint(
    migrations: Sequence[Migration], chosen: Sequence[Migration]
) -> tuple[list[Allowance], bool]:
    """Lint the `chosen` migrations (the pending ones) in the context of all `migrations` (a
    CHECK validated by an applied one counts), with conveyor.migrations.lint.

    Returns the allowances used (for the audit log) and whether the linter ran (it needs
    pglast); raises LintRefused naming every error-level finding that no allow comment allows.
    """
    linter = _linter()
    if not chosen or linter is None:
        return [], linter is not None
    paths = {m.path for m in chosen}
    report = linter.lint_migrations(migrations)
    refused = [
        f"{f.path}:{f.line}: {f.rule}: {f.message}"
        for f in report.findings
        if f.path in paths and f.level == "error"
    ]
    if refused:
        raise LintRefused(
            "refused: error-level findings in the pending migrations (nothing applied; fix "
            "them, or allow one with `-- conveyor:allow RULE because ...`):\n  "
            + "\n  ".join(refused)
        )
    allowances = [
        Allowance(str(a.rule), str(a.path), int(a.line), str(a.reason))
        for a in report.allowed
        if a.path in paths
    ]
    return allowances, True


def destroys(m: Migration) -> list[str]:
    """`file:line: what it loses` for each statement of `m`'s Down section that throws data
    away: the linter's judgement (pglast) when it can run, else conveyor.core's keywords."""
    statements = m.down or ()
    linter = _linter()
    if linter is not None:
        return [
            f"{m.path}:{statements[i].line}: {what}"
            for i, what in linter.destructive_statements(statements)
        ]
    return [f"{m.path}:{s.line}: {what}" for s, what in destructive(statements)]


def _record(target: Target, m: Migration, direction: str, seconds: float) -> None:
    if target.store is None:
        return
    from conveyor.store.schema_changes import SchemaChange, record

    record(
        target.store,
        SchemaChange(
            app=target.app,
            environment=target.environment,
            deployment_id=target.deployment_id,
            version=m.version,
            name=m.name,
            kind=m.kind,
            direction=direction,
            seconds=seconds,
            actor=target.actor,
            at=datetime.now(UTC),
        ),
    )


def _purpose(target: Target) -> str:
    by = f"deployment {target.deployment_id}" if target.deployment_id else target.actor
    return f"conveyor migrate {target.app}/{target.environment} ({by})"


def apply(
    migrations: Sequence[Migration], url: str, target: Target, progress: Progress
) -> list[Applied]:
    """Apply `migrations` in version order under the migration lock; what was applied.

    Versions another process applied meanwhile are skipped. Each is recorded in
    goose_db_version (with it, in its transaction) and in the state store (`target.store`).
    On a failure, MigrationFailed carries `.applied`: the ones before it, which stay.
    """
    return _migrate(sorted(migrations, key=lambda m: m.version), "up", url, target, progress)


def _migrate(
    chosen: Sequence[Migration], direction: str, url: str, target: Target, progress: Progress
) -> list[Applied]:
    """Run `chosen` in this order under the migration lock, each recorded as it is done."""
    if not chosen:
        return []
    up = direction == "up"
    verb, past = ("applying", "applied") if up else ("undoing", "undid")
    where = masked(url)
    done: list[Applied] = []
    conn = runner.connect(url, where, _purpose(target))
    with conn, runner.migration_lock(conn, where, target.lock_wait, progress):
        runner.ensure_table(conn)
        # Read under the lock: another deploy may have migrated while this one waited.
        current = runner.applied_versions(conn)
        for m in chosen:
            if (m.version in current) == up:
                progress(f"{m.label}: " + ("already applied" if up else "not applied"))
                continue
            progress(f"{verb} {m.label} ({m.kind})")
            try:
                seconds = runner.run(conn, m, direction)
            except MigrationFailed as exc:
                exc.applied = list(done)
                raise
            _record(target, m, direction, seconds)
            done.append(Applied(m.version, m.name, m.kind, direction, seconds))
            progress(f"{past} {m.label} in {seconds:.2f}s")
    return done


def apply_contract(
    tree: Path, cfg: MigrationsConfig, url: str, target: Target, progress: Progress
) -> list[Applied]:
    """Apply the held contract migrations now (the standby window is over, or by hand).

    Expand migrations still pending are applied first: a contract migration may depend on
    them, and a release never runs on a schema missing an expand migration it brought.
    """
    todo = pending(tree, cfg, url)
    if todo.command is not None:
        return []
    return apply(todo.expand + todo.contract, url, target, progress)


def down(
    tree: Path,
    cfg: MigrationsConfig,
    url: str,
    target: Target,
    progress: Progress,
    *,
    versions: Sequence[int] | None = None,
    to: int | None = None,
    force: bool = False,
) -> list[Applied]:
    """Run Down sections newest first: of `versions` (a deployment's own, to undo them on a
    rollback), else of every applied version above `to`, else of the newest applied one.

    Refuses (DownRefused, nothing undone) when one has no Down section, or when a Down section
    destroys data (drops a table or column, truncates, deletes) and `force` is not given.
    """
    migrations = load(tree, cfg)
    done_versions = applied(url)
    try:
        if versions is not None:
            chosen = select(migrations, [v for v in versions if v in done_versions])
            missing = sorted(set(versions) & set(done_versions) - {m.version for m in chosen})
            if missing:
                raise PlanError(f"version {missing[0]} is applied but its file is gone")
            for m in chosen:
                if not m.down:
                    raise PlanError(f"{m.path} has no Down section: it cannot be undone")
        else:
            chosen = down_plan(migrations, done_versions, to)
    except PlanError as exc:
        raise DownRefused(f"refused (nothing undone): {exc}") from None
    if not force:
        risky = [line for m in chosen for line in destroys(m)]
        if risky:
            raise DownRefused(
                "refused (nothing undone): these Down sections destroy data; pass --force to "
                "run them anyway (a backup: conveyor db backups):\n  " + "\n  ".join(risky)
            )
    return _migrate(chosen, "down", url, target, progress)


def run_delegated(
    tree: Path, cfg: MigrationsConfig, url: str, progress: Progress, direction: str = "up"
) -> CommandResult:
    """`[migrations] command` (or down_command) in the release, DATABASE_URL in its
    environment. Raises CommandFailed, or DownRefused when no down_command is configured."""
    command = cfg.command if direction == "up" else cfg.down_command
    if command is None:
        raise DownRefused("[migrations] down_command is not set: nothing to undo with")
    names = tuple(dict.fromkeys(("DATABASE_URL", cfg.database_url_secret)))
    progress(f"running {command!r}")
    return run_command(command, tree, url, cfg.command_timeout, progress, names)


def take_backup(
    cfg: MigrationsConfig, url: str, home: Path, target: Target, progress: Progress
) -> backups.Backup:
    """pg_dump of the app database into home/backups/<environment>/, keeping
    cfg.backup_keep of them (BackupError when it cannot be made: do not migrate then). It
    records the applied versions, `target.deployment_id` and the release live now (read from
    `target.store`), which `conveyor db restore` compares with the one live then."""
    started = time.monotonic()
    versions = sorted(applied(url))
    live = live_release(target.store, target.app, target.environment) if target.store else None
    made = backups.take(
        url,
        backups.directory(home, target.environment),
        target.environment,
        versions,
        target.deployment_id,
        live,
        cfg.backup_keep,
        progress,
    )
    progress(f"backup {made.name} taken in {time.monotonic() - started:.2f}s")
    return made


def live_release(store: Store, app: str, environment: str) -> str | None:
    """The version the environment's active color runs (None: nothing is live)."""
    versions = {i.version for i in store.instances(app, environment) if i.role == "active"}
    return sorted(versions)[0] if versions else None


def deployment_versions(store: Store, app: str, environment: str, deployment_id: int) -> list[int]:
    """The versions a deployment applied and that are still recorded as applied by it."""
    from conveyor.store.schema_changes import applied_by, changes

    return sorted(
        v
        for v, change in applied_by(changes(store, app, environment)).items()
        if change.deployment_id == deployment_id
    )
