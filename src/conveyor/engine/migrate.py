"""The app database's migrations as steps of a deployment; conveyor.migrations.steps does them.

- expand migrations run after the new release is staged and before its processes start: the
  old version keeps serving on the expanded schema by construction. A failure (or a lint
  refusal) fails the deployment with the file, line and PostgreSQL's message; nothing switched.
- contract migrations are held while an old color could take traffic again: they run once the
  standby window is over and the old color is stopped (the supervisor), at the end of a
  deployment that left no old color running, or by `conveyor migrate contract --env E`.
- `conveyor rollback --migrations down` runs the Down sections of what the rolled-back
  deployment applied, newest first, after traffic has switched back (a destructive one only
  with --force).

Each step is recorded in the deployment's history (versions and the time each took), and the
lint allowances a migration used go into the audit log. The database URL is a secret
(`database_url_secret`), resolved like the services' own: it is never shown, and the redactor
knows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor import identity
from conveyor.config import ResolvedEnvironment
from conveyor.engine.context import Context
from conveyor.engine.errors import EngineError
from conveyor.engine.outcome import Emit, Outcome
from conveyor.migrations import steps
from conveyor.migrations.database import database_url
from conveyor.migrations.goose import MigrationFileError
from conveyor.migrations.runner import Applied, MigrationError, MigrationFailed
from conveyor.secrets.base import SecretError, SecretValue
from conveyor.store.db import InstanceRecord

# What a migration step may fail with: all are the operator's to read, none a bug.
ERRORS = (MigrationError, MigrationFileError, SecretError)


def labels(applied: Sequence[Applied]) -> str:
    return ", ".join(f"{a.version} {a.name} ({a.seconds:.2f}s)" for a in applied)


@dataclass
class Migrator:
    """The migration steps of one environment, for one deployment (or none: by hand)."""

    ctx: Context
    env: ResolvedEnvironment
    emit: Emit
    deployment_id: int | None
    # Secrets the deployment resolved already: the database URL is often one of them, and
    # then the version the services got is the one migrated.
    known: Mapping[str, SecretValue]

    @property
    def configured(self) -> bool:
        return self.env.migrations is not None

    async def url(self) -> str:
        cfg = self.env.migrations
        assert cfg is not None
        name = cfg.database_url_secret
        found = None if cfg.database_url else self.known.get(name)
        if found is None and not cfg.database_url:
            try:
                found = (await self.ctx.secrets.resolve(self.env, [name], None, "migrations"))[name]
            except SecretError:
                found = None  # database_url() looks in conveyor's environment, then says where
        value = found.value if found is not None else None
        return database_url(cfg, self.env.name, (lambda _n, _e: value) if value else None)

    def _target(self) -> steps.Target:
        cfg = self.env.migrations
        assert cfg is not None
        return steps.Target(
            app=self.env.app,
            environment=self.env.name,
            deployment_id=self.deployment_id,
            store=self.ctx.store,
            actor=identity.actor(),
            lock_wait=cfg.lock_wait,
        )

    def _progress(self) -> steps.Progress:
        """Progress lines from the migration thread, shown on the event loop (redacted)."""
        loop = asyncio.get_running_loop()
        redactor = self.ctx.secrets.redactor

        def show(line: str) -> None:
            event = {"step": "migrate", "message": redactor.text(line)}
            loop.call_soon_threadsafe(self.emit, event)

        return show

    def _record(self, state: str, reason: str, data: dict[str, Any] | None = None) -> None:
        if self.deployment_id is not None:
            self.ctx.journal.record(self.deployment_id, state, reason, data, emit=self.emit)

    def _applied(self, state: str, what: str, applied: Sequence[Applied]) -> None:
        """In the history: which migrations, and how long each took."""
        if applied:
            said = what.format(n=len(applied), s="s" if len(applied) > 1 else "")
            data = {"migrations": [a.to_json() for a in applied]}
            self._record(state, f"{said}: {labels(applied)}", data)

    async def expand(self, tree: Path) -> None:
        """Pending expand migrations, before the release starts; raises one of ERRORS.

        Contract ones are only listed (held). A backup comes first when configured.
        """
        cfg = self.env.migrations
        if cfg is None:
            return
        self._record("migrating", "looking for pending migrations")
        url = await self.url()
        progress = self._progress()
        todo = await asyncio.to_thread(steps.pending, tree, cfg, url)
        for allowed in todo.allowances:
            self.ctx.journal.audit(
                self.env.app,
                "migration.allow",
                self.env.name,
                f"{allowed.path}:{allowed.line}",
                "ok",
                f"{allowed.rule} allowed: {allowed.reason}",
                {**allowed.to_json(), "deployment": self.deployment_id},
            )
        if todo.command is not None:
            result = await asyncio.to_thread(steps.run_delegated, tree, cfg, url, progress)
            self._record(
                "migrated",
                f"ran {result.command!r} in {result.seconds:.2f}s",
                {"command": result.command, "seconds": result.seconds},
            )
            return
        if todo.empty:
            self._record("migrated", "no pending migrations", {"migrations": []})
            return
        target = self._target()
        if cfg.backup:
            made = await asyncio.to_thread(
                steps.take_backup, cfg, url, self.ctx.paths.home, target, progress
            )
            self._record("backup", f"database backup {made.name}", {"backup": made.name})
        try:
            applied = await asyncio.to_thread(steps.apply, todo.expand, url, target, progress)
        except MigrationFailed as exc:
            self._applied("migrated", "applied before the failure", exc.applied)
            raise
        self._applied("migrated", "applied {n} expand migration{s}", applied)
        if todo.contract:
            held = ", ".join(m.label for m in todo.contract)
            self._record(
                "contract_held",
                f"contract migrations held until the previous version is stopped: {held}",
                {"held": [m.version for m in todo.contract]},
            )

    async def contract(self, tree: Path) -> list[Applied]:
        """The release's contract migrations (and any expand one still pending), now."""
        cfg = self.env.migrations
        if cfg is None:
            return []
        url = await self.url()
        applied = await asyncio.to_thread(
            steps.apply_contract, tree, cfg, url, self._target(), self._progress()
        )
        self._applied("contract", "applied {n} contract migration{s}", applied)
        return applied

    async def contract_unless_standby(self, tree: Path) -> None:
        """After a deployment went live: the contract migrations at once when no old color
        could take traffic again (a first deployment, no standby window); else the supervisor
        runs them when the standby is stopped. A failure is recorded; the release stays live."""
        rows = self.ctx.store.instances(self.env.app, self.env.name)
        if any(r.role == "standby" for r in rows):
            return
        try:
            await self.contract(tree)
        except ERRORS as exc:
            self._record(
                "contract_failed",
                f"contract migrations failed: {exc}; `conveyor migrate contract --env "
                f"{self.env.name}` runs them once fixed",
            )

    async def down(self, tree: Path, of_deployment: int, force: bool) -> list[Applied]:
        """Undo what deployment `of_deployment` applied, newest first (its release's Down
        sections); DownRefused for one without Down, or destructive without `force`."""
        cfg = self.env.migrations
        if cfg is None:
            return []
        url = await self.url()
        versions = await asyncio.to_thread(
            steps.deployment_versions, self.ctx.store, self.env.app, self.env.name, of_deployment
        )
        if not versions:
            self._record("migrated_down", "no migrations to undo", {"migrations": []})
            return []
        target, progress = self._target(), self._progress()
        undone = await asyncio.to_thread(
            lambda: steps.down(tree, cfg, url, target, progress, versions=versions, force=force)
        )
        self._applied("migrated_down", "undid {n} migration{s}", undone)
        return undone


async def undo_rolled_back(
    ctx: Context,
    env: ResolvedEnvironment,
    rolled: InstanceRecord,
    outcome: Outcome,
    emit: Emit,
    force: bool,
) -> None:
    """`rollback --migrations down`, traffic back already: undo what the deployment of the
    rolled-back color applied. A refusal or failure makes the rollback's exit 1 and says why."""
    release = ctx.store.get_release(env.app, rolled.version)
    if env.migrations is None or release is None or rolled.deployment_id is None:
        outcome.reason += "; no migrations to undo ([migrations] is not configured)"
        return
    migrator = Migrator(ctx, env, emit, outcome.deployment_id, {})
    try:
        undone = await migrator.down(ctx.tree(release), rolled.deployment_id, force)
    except (*ERRORS, EngineError) as exc:
        why = f"the migrations of {rolled.version} were not undone: {exc}"
        migrator._record("migrated_down", why)
        outcome.exit_code = 1
        outcome.reason += f"; {why}"
        return
    outcome.data["migrations_down"] = [a.to_json() for a in undone]
    if undone:
        outcome.reason += f"; undid the migrations {labels(undone)}"
