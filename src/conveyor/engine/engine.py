"""The rollout engine: the verbs an operator says (deploy, rollback, promote, abort, status).

It builds the `Context` (engine/context.py) that a deployment, a rollback and the supervisor each
work through, and holds the deployments in progress. Everything else lives in the parts: the
fleet of colors, the traffic, the locks, the journal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from conveyor import identity
from conveyor.config import ResolvedEnvironment
from conveyor.core import rollout as r
from conveyor.engine import rollback as rollback_mod
from conveyor.engine import status as status_mod
from conveyor.engine.context import Clock, Context, utcnow
from conveyor.engine.deployment import Deployment
from conveyor.engine.errors import Refused, UserError
from conveyor.engine.fleet import Fleet, Probe, probe_endpoint
from conveyor.engine.journal import Journal
from conveyor.engine.locks import Locks
from conveyor.engine.migrate import Migrator, undo_rolled_back
from conveyor.engine.outcome import Emit, Outcome
from conveyor.engine.project import ProjectConfig
from conveyor.engine.secrets import (
    EVENT,
    DeploySecrets,
    Pin,
    Resolve,
    changes,
    default_resolve,
    needed,
    pins,
    pins_of,
    redacting,
    refuse_literal_credentials,
    unresolved,
)
from conveyor.engine.supervisor import Supervisor
from conveyor.engine.traffic import ROUTER_ERRORS, Traffic
from conveyor.markers import project_id
from conveyor.paths import Paths
from conveyor.routers.base import Router
from conveyor.routers.registry import make_router
from conveyor.runtimes.base import Runtime
from conveyor.runtimes.registry import Runtimes
from conveyor.secrets.base import SecretError, SecretValue
from conveyor.store.db import ReleaseRecord, Store

log = logging.getLogger("conveyor.engine")

# What a deployment that starts colors is: a deploy, a rollback by redeploy, a start after a stop.
Kind = Literal["deploy", "rollback", "start"]


def configured_router(project: ProjectConfig) -> str:
    """`[router] kind` as the agent starts (a change takes effect at its next start); the
    built-in proxy while conveyor.toml cannot be read, which every command reports anyway."""
    try:
        return project.load().router.kind
    except UserError:
        return "builtin"


class Engine:
    def __init__(
        self,
        project_dir: Path,
        paths: Paths,
        store: Store,
        runtime: Runtime | None = None,
        router: Router | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        probe: Probe = probe_endpoint,
        resolve: Resolve | None = None,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        clock = Clock(now=monotonic, utcnow=wall)
        project = ProjectConfig(project_dir)
        secrets = DeploySecrets(
            paths.home / "run" / "secrets",
            resolve or default_resolve(store, project_dir, paths.home),
        )
        self.ctx = Context(
            project=project,
            paths=paths,
            store=store,
            fleet=Fleet(
                runtime or Runtimes(paths.logs), store, probe, project_id(paths.home), secrets
            ),
            traffic=Traffic(
                router or make_router(configured_router(project), paths, project.dir),
                paths.home / "routes.json",
                clock.now,
            ),
            locks=Locks(store, lambda: project.app, clock.utcnow),
            journal=Journal(store, clock.utcnow, secrets.redactor),
            clock=clock,
        )
        self.supervisor = Supervisor(self.ctx, self._automatic_rollback)
        self.deployments: dict[str, Deployment] = {}  # environment -> deployment in progress

    @property
    def app(self) -> str:
        return self.ctx.project.app

    # --- deploy ---------------------------------------------------------------------------------

    async def deploy(
        self,
        env_name: str,
        version: str,
        emit: Emit,
        kind: Kind = "deploy",
        reason: str = "",
        force: bool = False,
        pinned: Mapping[str, Pin] | None = None,
    ) -> Outcome:
        """Make `version` live in `env_name`. Redeploying the live version needs `force` (it
        restarts it blue/green, and the older standby makes room for the live one), unless
        its secrets have new versions since: then it is what picks them up.

        The services' secrets are resolved first (the `pinned` versions, e.g. a rollback's,
        else the current ones); one that cannot be fails the deployment before anything starts.
        """
        ctx = self.ctx
        env = ctx.project.environment(env_name)
        release = ctx.store.get_release(env.app, version)
        if release is None:
            known = [rel.version for rel in ctx.store.list_releases(env.app)[:10]]
            hint = f" (known: {', '.join(known)})" if known else " (there are no releases yet)"
            raise UserError(
                f"unknown release {version!r}{hint}; create it with "
                f"`conveyor release create --version {version}`"
            )
        if kind == "deploy":
            refuse_literal_credentials(ctx.project.load())
        emit = redacting(emit, ctx.secrets.redactor)
        active = [r for r in ctx.store.instances(env.app, env_name) if r.role == "active"]
        again = (
            kind == "deploy" and not force and active and all(r.version == version for r in active)
        )
        names = needed(env)
        if again and not names:
            raise UserError(self._already_live(version, env_name, False))
        ctx.traffic.check_ports(env, ctx.project.file)
        tree = ctx.tree(release)
        with ctx.locks.hold(env_name, f"{kind} of {version}"):
            try:
                try:
                    values = await ctx.secrets.resolve(env, names, pinned, f"{kind} of {version}")
                except SecretError as exc:
                    previous = active[0].version if active else None
                    return unresolved(
                        ctx.journal, env, release.version, kind, previous, reason, emit, exc
                    )
                live_deployment = next((r.deployment_id for r in active if r.deployment_id), None)
                changed = changes(pins_of(ctx.store, live_deployment), values)
                note = ""
                if again:
                    if not changed:
                        raise UserError(self._already_live(version, env_name, True))
                    note = f"only the secrets changed: {'; '.join(changed)}"
                    reason = reason or note
                outcome = await self._deploy(env, release, tree, emit, kind, reason, values, note)
                outcome.data = ctx.secrets.redactor.data(outcome.data)
                outcome.reason = ctx.secrets.redactor.text(outcome.reason)
                return outcome
            finally:
                self.deployments.pop(env_name, None)
                self.supervisor.watch_exits()  # the colors it left live, from now on

    @staticmethod
    def _already_live(version: str, env_name: str, secrets: bool) -> str:
        same = " with the same secret versions" if secrets else ""
        return (
            f"{version} is already live in {env_name}{same}; use "
            f"`conveyor deploy {version} --env {env_name} --force` to restart it blue/green"
        )

    async def _deploy(
        self,
        env: ResolvedEnvironment,
        release: ReleaseRecord,
        tree: Path,
        emit: Emit,
        kind: Kind,
        reason: str,
        secrets: dict[str, SecretValue],
        note: str = "",
    ) -> Outcome:
        ctx = self.ctx
        live = {(i.service, i.color): i for i in ctx.store.instances(env.app, env.name)}
        active = {i.service: i for i in live.values() if i.role == "active"}
        previous = next(iter(active.values())).version if active else None
        dep_id = ctx.journal.open(env.app, env.name, release.version, kind, previous, reason)
        strategy = env.rollout.strategy
        emit(
            {
                "step": "started",
                "deployment": dep_id,
                "message": f"deploying {release.version} to {env.name} ({strategy}, "
                f"deployment #{dep_id})",
            }
        )
        if secrets:
            shown = ", ".join(f"{n} ({v.provider} {v.version})" for n, v in sorted(secrets.items()))
            notes = [str(n) for n in getattr(secrets, "notes", ())]  # fallbacks that happened
            ctx.journal.record(
                dep_id,
                EVENT,
                f"secrets: {shown}" + "".join(f"; {n}" for n in notes),
                {"secrets": pins(secrets), "notes": notes},
                emit=emit,
            )
        dep = Deployment(ctx, dep_id, env, release, tree, emit, active, previous, secrets, note)
        if env.migrations is not None:
            dep.migrator = Migrator(ctx, env, emit, dep_id, secrets)
        self.deployments[env.name] = dep
        plans = []
        for name, svc in env.services.items():
            old = active.get(name)
            new_color = r.other_color(old.color if old else None)
            leftover = live.get((name, new_color))
            if leftover is not None:
                # The slot we need holds an older standby: it is replaced by this release.
                await ctx.traffic.standby_gone(env.name, name, new_color)
                await ctx.fleet.stop(leftover, svc.stop_timeout)
                emit(
                    {
                        "step": "replaced",
                        "message": f"stopped {name} {leftover.version} ({new_color})",
                    }
                )
            plans.append(
                r.ServicePlan(
                    name=name,
                    kind=svc.kind,
                    old_color=old.color if old else None,
                    new_color=new_color,
                    healthy_threshold=svc.health.healthy_threshold,
                    start_timeout=svc.health.start_timeout,
                    unhealthy_threshold=svc.health.unhealthy_threshold,
                )
            )
        state = await dep.run(tuple(plans))
        outcome = str(state.phase) if state.terminal else "failed"
        if outcome == "succeeded" and dep.migrator is not None:
            await dep.migrator.contract_unless_standby(tree)
        data: dict[str, Any] = {
            "environment": env.name,
            "version": release.version,
            "previous_version": previous,
            "strategy": strategy,
            "switch_ms": dep.switch_ms,
            "death_to_switch_ms": dep.death_to_switch,
            "measurements": [m.to_json() for m in dep.measurements.values()],
        }
        if dep.failed_logs:
            data["logs"] = dep.failed_logs
        record = ctx.store.get_deployment(dep_id)
        return Outcome(
            0 if outcome == "succeeded" else 1,
            dep_id,
            outcome,
            record.reason if record else state.reason,
            data,
        )

    # --- promote, abort -------------------------------------------------------------------------

    def _running(self, env_name: str) -> Deployment:
        self.ctx.project.environment(env_name)
        dep = self.deployments.get(env_name)
        if dep is None or dep.state is None:
            raise Refused(f"no deployment is in progress in {env_name}")
        return dep

    def promote(self, env_name: str, full: bool) -> dict[str, Any]:
        dep = self._running(env_name)
        assert dep.state is not None
        if dep.state.phase not in (r.Phase.AWAITING_PROMOTION, r.Phase.STEP, r.Phase.BAKING):
            raise Refused(
                f"nothing to promote: deployment #{dep.id} is {dep.state.phase} "
                "(promote applies to a manual gate, a canary step or the bake)"
            )
        dep.queue.put_nowait(r.Promote(full, self.ctx.clock.now()))
        return {"deployment": dep.id, "version": dep.release.version, "phase": str(dep.state.phase)}

    def abort(self, env_name: str, reason: str) -> dict[str, Any]:
        dep = self._running(env_name)
        dep.queue.put_nowait(r.Abort(reason, self.ctx.clock.now()))
        return {"deployment": dep.id, "version": dep.release.version}

    # --- rollback -------------------------------------------------------------------------------

    async def rollback(
        self,
        env_name: str,
        emit: Emit,
        keep_secrets: bool = False,
        migrations_down: bool = False,
        force: bool = False,
    ) -> Outcome:
        """`conveyor rollback`; with `migrations_down`, once traffic is back, the Down sections
        of the migrations the rolled-back deployment applied run, newest first (one that
        destroys data only with `force`)."""
        ctx = self.ctx
        env = ctx.project.environment(env_name)
        rows = ctx.store.instances(env.app, env_name)
        rolled = next((r for r in rows if r.role == "active" and r.deployment_id), None)
        outcome = await self._rollback(env_name, emit, "", keep_secrets=keep_secrets)
        if migrations_down and outcome.exit_code == 0 and rolled is not None:
            await undo_rolled_back(ctx, env, rolled, outcome, emit, force)
        return outcome

    async def _rollback(
        self,
        env_name: str,
        emit: Emit,
        reason: str,
        died_at: float | None = None,
        keep_secrets: bool = False,
    ) -> Outcome:
        """To the standby colors at once if they run, else by redeploying the previous release.

        `reason` (automatic rollbacks, interrupted deployments) goes into the history, and so
        does the time from `died_at` (a crash's moment) to the switch. The previous release
        gets the secret versions it ran with, unless `keep_secrets` (a secret rotated because
        it leaked): then it is redeployed with the current ones, even when its standby runs
        (the standby holds the old values).
        """
        ctx = self.ctx
        env = ctx.project.environment(env_name)
        holder = ctx.locks.holder(env_name)
        if holder is not None:  # what runs there now decides what a rollback would be
            raise Refused(
                f"a deployment to {env_name} is already in progress ({holder}); "
                f"`conveyor abort --env {env_name}` stops it and keeps the previous version"
            )
        found = await rollback_mod.plan(ctx, env, reason)
        if found.mode == "none":
            raise Refused(f"cannot roll back {env_name}: {found.reason}")
        assert found.version is not None
        if keep_secrets and found.mode == "switch" and needed(env):
            found = r.RollbackPlan(
                "redeploy",
                found.version,
                (),
                f"redeploying {found.version} with the current secret versions (--keep-secrets)",
            )
        assert found.version is not None
        if found.mode == "redeploy":
            current = rollback_mod.current_version(ctx.store.instances(env.app, env.name))
            emit({"step": "plan", "message": found.reason})
            pinned = None
            if not keep_secrets:
                pinned = pins_of(ctx.store, rollback_mod.last_live(ctx, env, found.version))
            outcome = await self.deploy(
                env_name, found.version, emit, kind="rollback", reason=found.reason, pinned=pinned
            )
            if outcome.exit_code == 0:
                ctx.journal.mark_rolled_back(env.app, env.name, current, outcome.deployment_id)
            return outcome
        with ctx.locks.hold(env_name, f"rollback to {found.version}"):
            outcome = await rollback_mod.switch_back(ctx, env, found, emit, died_at)
        self.supervisor.watch_exits()
        return outcome

    async def _automatic_rollback(
        self, env_name: str, emit: Emit, reason: str, died_at: float | None = None
    ) -> Outcome:
        """The supervisor's own rollbacks (recovery, the standby window): in the audit log as
        the agent's decision."""
        token = identity.acting.set(identity.AGENT)
        try:
            outcome = await self._rollback(env_name, emit, reason, died_at)
            self.ctx.journal.audit(
                self.app,
                "rollback",
                env_name,
                str(outcome.data.get("version") or env_name),
                "ok" if outcome.exit_code == 0 else "failed",
                reason,
                {"deployment": outcome.deployment_id, "automatic": True},
            )
            return outcome
        finally:
            identity.acting.reset(token)

    # --- stop and start an environment -----------------------------------------------------------

    async def stop_env(self, env_name: str, emit: Emit) -> Outcome:
        """Take an environment down: its routes removed, every color stopped, in the history."""
        ctx = self.ctx
        env = ctx.project.environment(env_name)
        with ctx.locks.hold(env_name, "stop"):
            rows = ctx.store.instances(env.app, env_name)
            if not rows:
                raise Refused(f"nothing runs in {env_name}: it is stopped already")
            current = rollback_mod.current_version(rows) or rows[0].version
            journal = ctx.journal
            dep_id = journal.open(env.app, env_name, current, "stop", current, "by request")
            emit({"step": "started", "deployment": dep_id, "message": f"stopping {env_name}"})
            for route in sorted(
                r for r in ctx.traffic.table.routes if r.startswith(f"{env_name}/")
            ):
                try:
                    await ctx.traffic.remove(route)
                except ROUTER_ERRORS as exc:
                    reason = f"removing the route {route} failed: {exc}"
                    journal.finish(dep_id, "failed", reason)
                    return Outcome(1, dep_id, "failed", reason)
                journal.record(dep_id, "unrouted", f"{route} no longer listens", emit=emit)
            for row in rows:
                svc = env.services.get(row.service)
                await ctx.fleet.stop(row, svc.stop_timeout if svc else 10.0)
                journal.record(
                    dep_id,
                    "stopped",
                    f"stopped {row.service} {row.version} ({row.color}, {row.role})",
                    emit=emit,
                    service=row.service,
                )
            reason = (
                f"stopped {env_name} ({current}): `conveyor start --env {env_name}` brings it back"
            )
            journal.finish(dep_id, "succeeded", reason)
            return Outcome(
                0, dep_id, "succeeded", reason, {"environment": env_name, "version": current}
            )

    async def start_env(self, env_name: str, emit: Emit) -> Outcome:
        """Bring a stopped environment back on the version it ran when it was stopped (or the
        last one that went live), blue/green like any deployment."""
        ctx = self.ctx
        env = ctx.project.environment(env_name)
        rows = ctx.store.instances(env.app, env_name)
        if rows:
            running = ", ".join(sorted({r.version for r in rows}))
            raise Refused(f"{env_name} is running ({running}): nothing to start")
        last = next(
            (
                dep
                for dep in ctx.store.list_deployments(env.app, env_name, limit=200)
                if dep.outcome == "succeeded"
            ),
            None,
        )
        if last is None:
            raise Refused(f"nothing ever went live in {env_name}: deploy a release first")
        # With the secret versions it ran with when it was stopped.
        pinned = pins_of(ctx.store, rollback_mod.last_live(ctx, env, last.version))
        return await self.deploy(
            env_name, last.version, emit, kind="start", reason="started again", pinned=pinned
        )

    # --- status ---------------------------------------------------------------------------------

    async def status(self, env_name: str) -> dict[str, Any]:
        ctx = self.ctx
        env = ctx.project.environment(env_name)
        rows = ctx.store.instances(env.app, env_name)
        dep = self.deployments.get(env_name)
        services = await status_mod.services(ctx.fleet, ctx.traffic, env, rows)
        for entry in services:  # restarts and crash loops, as the supervisor saw them
            row = next((r for r in rows if r.service == entry["name"] and r.role == "active"), None)
            if entry["active"] is not None and row is not None:
                entry["active"]["restarts"] = self.supervisor.restarts_of(row)
                pinned = pins_of(ctx.store, row.deployment_id) or {}
                entry["active"]["secrets"] = {
                    n: {"provider": p[0], "version": p[1]} for n, p in sorted(pinned.items())
                }
        return {
            "last_deployment": status_mod.last_finished(ctx.store, env.app, env_name),
            "environment": env_name,
            "app": env.app,
            "strategy": env.rollout.strategy,
            "deploying": ctx.locks.holder(env_name),
            "deployment": dep.describe() if dep is not None else None,
            "services": services,
            "notes": status_mod.config_notes(services),
        }

    # --- the supervisor's entry points, for the agent -------------------------------------------

    async def recover(self) -> list[str]:
        return await self.supervisor.recover()

    async def supervise_once(self) -> list[str]:
        return await self.supervisor.supervise_once()

    async def shutdown(self, keep_running: bool) -> None:
        await self.supervisor.shutdown(keep_running)
