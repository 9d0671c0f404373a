"""Adoption after an agent restart, and the supervisor's periodic pass.

Traffic outlives the control plane: a new agent adopts the router and every workload it can
verify, and brings back from the database whatever is missing. Between deployments the supervisor
keeps the environment as recorded: active colors run (restarted with back-off, core/restarts.py;
a crash loop goes to the history and the webhooks), standby colors end
when their time is up, and a new version that fails while its predecessor waits on standby is
switched back at once, through the rollback it is handed (it never imports the engine).

Deaths are known when they happen: every recorded color has a watcher waiting on the runtime's
`exited`, so a new version that dies in the standby window is switched back within milliseconds.
Where the runtime cannot watch (no pidfds), the periodic pass notices instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conveyor.config import Config, ConfigError, ResolvedEnvironment, ServiceConfig
from conveyor.core import restarts as rs
from conveyor.core.durations import format_duration
from conveyor.engine.context import Context, wall_time
from conveyor.engine.errors import EngineError, UserError
from conveyor.engine.fleet import HandleId, Key, handle_id, key_of
from conveyor.engine.locks import Locked
from conveyor.engine.migrate import ERRORS as MIGRATION_ERRORS
from conveyor.engine.migrate import Migrator, labels
from conveyor.engine.notify import Notice, Notifier
from conveyor.engine.outcome import Emit, Outcome
from conveyor.engine.secrets import names_of, pins_of
from conveyor.engine.traffic import ROUTER_ERRORS
from conveyor.engine.watch import StandbyWatch
from conveyor.releases import ReleaseError
from conveyor.runtimes.base import Handle, RunState, RuntimeStartError
from conveyor.secrets.base import SecretError
from conveyor.store.db import DeploymentRecord, InstanceRecord

log = logging.getLogger("conveyor.supervisor")

# What bringing a color back may run into that is not a bug: a broken configuration, a missing
# release, a runtime or router that refuses. Anything else is a bug and is logged as one.
RESTART_ERRORS = (
    ConfigError,
    EngineError,
    RuntimeStartError,
    ReleaseError,
    SecretError,
    *ROUTER_ERRORS,
)
INTERRUPTED = "interrupted: the agent stopped during the deployment"

# (environment, emit, reason, when the crash it answers happened or None) -> what it did
Rollback = Callable[[str, Emit, str, float | None], Awaitable[Outcome]]


def _quiet(_event: dict[str, object]) -> None:
    """Emit for operations nobody follows (the supervisor's own rollbacks)."""


@dataclass
class Crashes:
    """One color's crashes, about one workload: the one its latest restart started."""

    handle: HandleId | None
    history: rs.Restarts = field(default_factory=rs.Restarts)
    down: bool = False  # its exit is noted and its restart is due at history.due
    announced: bool = False  # this crash loop went to the history and the webhooks


class Supervisor:
    def __init__(
        self, ctx: Context, rollback: Rollback, policy: rs.RestartPolicy | None = None
    ) -> None:
        self.ctx = ctx
        self.rollback = rollback
        self.policy = policy or rs.RestartPolicy()
        self.crashes: dict[Key, Crashes] = {}  # active colors that exited, and their restarts
        self.timers: dict[Key, asyncio.Task[None]] = {}  # restarts waiting out their back-off
        self.notifying: set[asyncio.Task[None]] = set()  # crash-loop webhooks being delivered
        self.watch: dict[Key, int] = {}  # failed health checks in a row during the standby window
        self.standby_watch = StandbyWatch(ctx)  # analysis during the standby window
        self.exit_watchers: dict[Key, tuple[HandleId, asyncio.Task[None]]] = {}
        self.acting: set[asyncio.Task[None]] = set()  # watchers acting on an exit

    async def ensure_router(self) -> bool:
        """Adopt the running router, or start one and give it the route table. True if started."""
        started, errors = await self.ctx.traffic.ensure()
        for error in errors:
            log.error("%s", error)
        return started

    # --- when the agent starts ------------------------------------------------------------------

    async def recover(self) -> list[str]:
        """Called once when the agent starts: adopt what still runs, bring back what is missing."""
        ctx = self.ctx
        notes: list[str] = []
        ctx.traffic.table.load()
        if await self.ensure_router():
            notes.append("started the proxy and restored its routes")
        else:
            notes.append("adopted the running proxy")
        try:
            cfg = ctx.project.load()
        except UserError as exc:
            notes.append(f"cannot read the configuration, services were not checked: {exc}")
            return notes
        interrupted = self._in_progress(cfg)
        for dep in interrupted:
            ctx.journal.finish(dep.id, "aborted", INTERRUPTED)
            notes.append(f"deployment #{dep.id} was interrupted by an agent restart: aborted")
        for row in ctx.store.instances(cfg.app.name):
            notes.extend(await self._recover_instance(cfg, row))
        for dep in interrupted:
            notes.extend(await self._settle_interrupted(cfg, dep.environment, dep.id))
        self.watch_exits()
        return notes

    async def _settle_interrupted(
        self, cfg: Config, env_name: str, deployment_id: int
    ) -> list[str]:
        """An interrupted deployment ends where it started: the version it replaced takes traffic.

        If it had switched already, its bake never finished: switch back to the standby. If it
        was part-way through a canary, its new colors are gone: the routes go back to the active
        colors.
        """
        ctx = self.ctx
        rows = ctx.store.instances(cfg.app.name, env_name)
        switched = any(r.role == "active" and r.deployment_id == deployment_id for r in rows)
        if switched and any(r.role == "standby" for r in rows):
            try:
                outcome = await self.rollback(env_name, _quiet, INTERRUPTED, None)
                return [f"{env_name}: {outcome.reason}"]
            except EngineError as exc:
                return [f"{env_name}: could not switch back after the interruption: {exc}"]
        notes: list[str] = []
        env = cfg.environment(env_name)
        for row in rows:
            svc = env.services.get(row.service)
            endpoint = ctx.fleet.endpoint(row)
            if row.role != "active" or svc is None or svc.kind != "web" or endpoint is None:
                continue
            wanted = ctx.traffic.single(env, row.service, row.color, endpoint)
            if ctx.traffic.current(wanted.route) != wanted:
                try:
                    await ctx.traffic.push(wanted)
                    notes.append(f"{wanted.route}: all traffic back on {row.version} ({row.color})")
                except ROUTER_ERRORS as exc:
                    notes.append(f"{wanted.route}: could not restore the route: {exc}")
        return notes

    def _in_progress(self, cfg: Config) -> list[DeploymentRecord]:
        store = self.ctx.store
        envs = set(cfg.environments) or {"dev"}
        envs.update(row.environment for row in store.instances(cfg.app.name))
        found = []
        for env in sorted(envs):
            dep = store.in_progress(cfg.app.name, env)
            if dep is not None:
                found.append(dep)
        return found

    async def _recover_instance(self, cfg: Config, row: InstanceRecord) -> list[str]:
        ctx = self.ctx
        what = f"{row.environment}/{row.service} {row.version} ({row.color})"
        if row.role == "starting":
            # Its deployment died with the previous agent: it never took traffic.
            await ctx.fleet.stop(row, 5.0)
            return [f"stopped {what}: its deployment was interrupted"]
        handle = await ctx.fleet.adopt(row)
        if handle is not None:
            await self._learn_secrets(cfg, row)
            return [f"adopted {what}, {handle.summary}"]
        if row.role == "standby" and row.standby_until and row.standby_until <= ctx.clock.utcnow():
            await ctx.traffic.standby_gone(row.environment, row.service, row.color)
            ctx.store.delete_instance(row.app, row.environment, row.service, row.color)
            return [f"dropped {what}: its standby time is over"]
        try:
            await self.restart(cfg.environment(row.environment), row)
        except RESTART_ERRORS as exc:
            return [f"could not bring back {what}: {exc}"]
        return [f"restarted {what}: it was not running"]

    async def _learn_secrets(self, cfg: Config, row: InstanceRecord) -> None:
        """An adopted color runs with its deployment's secret versions: resolve them again so
        that what this agent writes and shows is redacted of them too (best effort)."""
        try:
            env = cfg.environment(row.environment)
            names = names_of(env.services.get(row.service))
            if names:
                pinned = pins_of(self.ctx.store, row.deployment_id)
                await self.ctx.secrets.resolve(env, names, pinned, "adoption")
        except (ConfigError, SecretError) as exc:
            log.warning("secrets of an adopted color are not redacted: %s", exc)

    async def restart(self, env: ResolvedEnvironment, row: InstanceRecord) -> Handle:
        """Start a recorded color again, on its old port if that is still free, with the
        secret versions its deployment used."""
        ctx = self.ctx
        release = ctx.store.get_release(row.app, row.version)
        if release is None:
            raise ReleaseError(f"release {row.version} is missing")
        svc = env.services.get(row.service)
        if svc is None:
            raise UserError(f"service {row.service} is no longer in the configuration")
        pinned = pins_of(ctx.store, row.deployment_id)
        secrets = await ctx.secrets.resolve(env, names_of(svc), pinned, "restart")
        old = ctx.fleet.endpoint(row)
        handle = await ctx.fleet.spawn(
            env,
            row.service,
            row.color,
            row.version,
            ctx.tree(release),
            port=old.port if old is not None else 0,
            secrets=secrets,
            deployment_id=row.deployment_id,
        )
        ctx.fleet.record(
            env.name,
            row.service,
            row.color,
            release,
            handle,
            row.role,
            row.deployment_id,
            row.standby_until,
        )
        endpoint = handle.endpoint
        if row.role == "active" and endpoint is not None and svc.kind == "web":
            await ctx.traffic.push(ctx.traffic.single(env, row.service, row.color, endpoint))
        elif row.role == "standby" and endpoint is not None and svc.kind == "web":
            await ctx.traffic.standby_moved(env.name, row.service, row.color, endpoint)
        self.watch_exits()  # its next death is known at once too
        return handle

    # --- the moment a color dies -------------------------------------------------------------------

    def watch_exits(self) -> None:
        """A watcher for every recorded color (none twice), none for colors that are gone."""
        ctx = self.ctx
        app = ctx.project.known_app
        rows = ctx.store.instances(app) if app else []
        keys: set[Key] = set()
        for row in rows:
            handle = ctx.fleet.handle(row)
            if row.role == "starting" or handle is None:
                continue  # a starting color is its deployment's to watch
            key, hid = key_of(row), handle_id(handle)
            keys.add(key)
            current = self.exit_watchers.get(key)
            # A cancelled watcher belonged to an event loop that ended (tests run several).
            if current is not None and current[0] == hid and not current[1].cancelled():
                continue
            if current is not None:
                current[1].cancel()
            self.exit_watchers[key] = (hid, asyncio.create_task(self._watch_exit(key, handle)))
        for key in set(self.exit_watchers) - keys:
            self.exit_watchers.pop(key)[1].cancel()

    async def _watch_exit(self, key: Key, handle: Handle) -> None:
        ended = await self.ctx.fleet.exited(handle)
        if ended is None or handle_id(handle) in self.ctx.fleet.stopping:
            return  # cannot be watched (the periodic pass polls it), or stopped on purpose
        if self.ctx.store.lost() is not None:
            return  # the state it would act on is gone: the agent acts on nothing (and says so)
        task = asyncio.current_task()
        assert task is not None
        self.acting.add(task)  # from here on, a shutdown lets it finish (a switch back, say)
        try:
            for note in await self.on_exit(key, handle, ended):
                log.info("%s", note)
        except Exception:  # a watcher must not die silently: the periodic pass still acts
            log.exception("acting on the exit of %s failed", "/".join(key))
        finally:
            self.acting.discard(task)

    async def on_exit(self, key: Key, handle: Handle, ended: RunState) -> list[str]:
        """A recorded color died: if its predecessor waits on standby, switch back to it now."""
        ctx = self.ctx
        row = self._current(key, handle)
        if row is None or row.role != "active" or ctx.locks.holder(row.environment) is not None:
            return []  # replaced meanwhile, a standby, or a deployment's to decide
        standby = [
            r
            for r in ctx.store.instances(row.app, row.environment)
            if r.service == row.service and r.role == "standby"
        ]
        if not standby or not await ctx.fleet.alive(standby[0]):
            # Nothing to switch back to: restart it once its back-off is over.
            self.note_exit(row, handle, ended)
            note = await self.bring_back(row)
            return [note] if note else []
        self.watch.pop(key, None)
        detail = ended.detail
        if ended.ended_at is not None:
            detail += f" at {wall_time(ended.ended_at)}"
        why = (
            f"{row.service} {row.version} ({row.color}) exited during the standby window ({detail})"
        )
        return [await self._switch_back(row.environment, why, ended.ended_at)]

    def _current(self, key: Key, handle: Handle) -> InstanceRecord | None:
        """The recorded color at `key` if it is still the workload `handle` names."""
        for row in self.ctx.store.instances(self.ctx.project.app, key[0]):
            if key_of(row) == key:
                known = self.ctx.fleet.handle(row)
                if known is not None and handle_id(known) == handle_id(handle):
                    return row
        return None

    # --- restarts, with back-off, and crash loops ---------------------------------------------------

    def note_exit(self, row: InstanceRecord, handle: Handle, ended: RunState) -> None:
        """An active color ended: its restart is due after the back-off (once per workload)."""
        ctx = self.ctx
        key, hid, now = key_of(row), handle_id(handle), ctx.clock.now()
        cur = self.crashes.get(key)
        if cur is None or cur.handle != hid:
            cur = Crashes(hid)  # crashes of what ran here before (another version) do not count
        if cur.down:
            return  # told already (by its watcher, or by a pass)
        wall = ended.ended_at if ended.ended_at is not None else ctx.clock.utcnow().timestamp()
        cur.history = rs.exited(cur.history, rs.Exit(now, ended.detail, wall), self.policy)
        cur.down = True
        if not rs.crash_looping(cur.history, now, self.policy):
            cur.announced = False
        self.crashes[key] = cur

    async def bring_back(self, row: InstanceRecord) -> str | None:
        """Restart a crashed active color if its back-off is over; else wake up when it is."""
        ctx = self.ctx
        key, handle = key_of(row), ctx.fleet.handle(row)
        cur = self.crashes.get(key)
        if cur is None or not cur.down or handle is None or cur.handle != handle_id(handle):
            return None
        if self._current(key, handle) is None or ctx.locks.holder(row.environment) is not None:
            return None  # replaced meanwhile, or a deployment's to decide
        now = ctx.clock.now()
        due = cur.history.due or now
        if now < due:
            self._wake(key, due - now)
            return None
        what = f"{row.environment}/{row.service} {row.version} ({row.color})"
        detail = cur.history.last_exit.detail if cur.history.last_exit else "exited"
        # Marked before the first await: a pass and a watcher never both restart it.
        cur.history, cur.down = rs.restarted(cur.history, now, self.policy), False
        try:
            env = ctx.project.environment(row.environment)
            cur.handle = handle_id(await self.restart(env, row))
        except RESTART_ERRORS as exc:
            failed = rs.Exit(now, f"could not restart: {exc}", ctx.clock.utcnow().timestamp())
            cur.history, cur.down = rs.exited(cur.history, failed, self.policy), True
            self._wake(key, cur.history.due - now if cur.history.due else 0.0)
            return f"could not restart {what}: {exc}"
        note = (
            f"restarted {what}: it {detail}"
            if detail.startswith("exited")
            else (f"restarted {what}: it had exited ({detail})")
        )
        if rs.crash_looping(cur.history, now, self.policy) and not cur.announced:
            cur.announced = True
            note += f"; {self._crash_loop(env, row, cur)}"
        return note

    def _wake(self, key: Key, delay: float) -> None:
        """Try the restart again when its back-off is over (the periodic pass would, later)."""
        timer = self.timers.get(key)
        if timer is None or timer.done():
            self.timers[key] = asyncio.create_task(self._restart_later(key, delay))

    async def _restart_later(self, key: Key, delay: float) -> None:
        await asyncio.sleep(delay + 0.001)  # a sleep may end a hair early
        self.timers.pop(key, None)
        ctx = self.ctx
        app = ctx.project.known_app
        if ctx.store.lost() is not None:
            return  # the agent acts on nothing any more
        rows = ctx.store.instances(app, key[0]) if app else []
        row = next((r for r in rows if key_of(r) == key and r.role == "active"), None)
        try:
            note = await self.bring_back(row) if row is not None else None
        except Exception:  # the periodic pass still tries
            log.exception("restarting %s failed", "/".join(key))
            return
        if note:
            log.info("%s", note)

    def _crash_loop(self, env: ResolvedEnvironment, row: InstanceRecord, cur: Crashes) -> str:
        """Say it where people look: the environment's history, the webhooks, the log."""
        ctx, history = self.ctx, cur.history
        info = self.restart_info(cur, ctx.clock.now())
        last = history.last_exit
        assert info is not None and last is not None
        waits = ", ".join(format_duration(d) for d in history.delays)
        reason = (
            f"{row.service} {row.version} ({row.color}): {info['summary']}, last: {last.detail} "
            f"at {wall_time(last.wall)}; restarted after {waits}"
        )
        journal = ctx.journal
        dep_id = journal.open(
            row.app, row.environment, row.version, "crash_loop", row.version, reason
        )
        journal.record(dep_id, "crash_loop", reason, info, service=row.service)
        journal.finish(dep_id, "failed", reason)
        notifier = Notifier(list(env.notifications), ctx.secrets.redactor, self._secret_url(env))
        notifier.send(
            Notice(
                event="crash_loop",
                app=row.app,
                environment=row.environment,
                version=row.version,
                deployment_id=dep_id,
                reason=reason,
                measurements=[],
                at=ctx.clock.utcnow(),
            )
        )
        task = asyncio.create_task(notifier.aclose())
        self.notifying.add(task)
        task.add_done_callback(self.notifying.discard)
        log.warning("%s", reason)
        return f"crash-looping: recorded in the history (#{dep_id})"

    def _secret_url(self, env: ResolvedEnvironment) -> Callable[[str], Awaitable[str]]:
        async def url(name: str) -> str:
            return (await self.ctx.secrets.resolve(env, [name], None, "webhook"))[name].value

        return url

    def restart_info(self, cur: Crashes, now: float) -> dict[str, Any] | None:
        """What status says of a color's restarts (None: none lately)."""
        history = cur.history
        recent = rs.recent(history, now, self.policy)
        if not recent and not cur.down:
            return None
        last = history.last_exit
        return {
            "restarts": len(recent),
            "total": history.total,
            "crash_looping": rs.crash_looping(history, now, self.policy),
            "summary": rs.describe(history, now, self.policy) or "down",
            "backoff": list(history.delays[-len(recent) :]) if recent else [],
            "last_exit": {
                "detail": last.detail,
                "at": datetime.fromtimestamp(last.wall, UTC).isoformat(),
            }
            if last is not None
            else None,
            "next_restart_in": round(max(0.0, history.due - now), 3)
            if cur.down and history.due is not None
            else None,
        }

    def restarts_of(self, row: InstanceRecord) -> dict[str, Any] | None:
        """restart_info of a recorded color, if the crashes noted are about what runs there."""
        cur = self.crashes.get(key_of(row))
        handle = self.ctx.fleet.handle(row)
        if cur is None or handle is None or cur.handle != handle_id(handle):
            return None
        return self.restart_info(cur, self.ctx.clock.now())

    # --- every SUPERVISE_EVERY seconds ------------------------------------------------------------

    async def supervise_once(self) -> list[str]:
        """One pass: the router is up, active colors run, standby time is kept."""
        ctx = self.ctx
        notes: list[str] = []
        self.watch_exits()
        try:
            if await self.ensure_router():
                notes.append("the proxy was not answering: restarted it and restored its routes")
        except ROUTER_ERRORS as exc:
            notes.append(f"could not restart the proxy: {exc}")
        try:
            cfg = ctx.project.load()
        except UserError:
            return notes
        now = ctx.clock.utcnow()
        notes.extend(await self.watch_standby_window(cfg))
        expired: set[str] = set()
        for row in ctx.store.instances(cfg.app.name):
            if ctx.locks.holder(row.environment) is not None or row.role == "starting":
                continue
            what = f"{row.environment}/{row.service} {row.version} ({row.color})"
            if row.role == "standby" and row.standby_until is not None and row.standby_until <= now:
                svc = _service_config(cfg, row)
                await ctx.traffic.standby_gone(row.environment, row.service, row.color)
                await ctx.fleet.stop(row, svc.stop_timeout if svc else 10.0)
                notes.append(f"stopped standby {what}: its standby time is over")
                expired.add(row.environment)
            elif row.role == "active" and not await ctx.fleet.alive(row):
                handle = ctx.fleet.handle(row)
                if handle is not None:  # noted already if its watcher was told
                    self.note_exit(row, handle, await ctx.fleet.state(handle))
                note = await self.bring_back(row)
                if note:
                    notes.append(note)
            elif row.role == "standby" and not await ctx.fleet.alive(row):
                await ctx.traffic.standby_gone(row.environment, row.service, row.color)
                ctx.store.delete_instance(row.app, row.environment, row.service, row.color)
                notes.append(f"standby {what} exited: a rollback will redeploy instead")
        for env_name in sorted(expired):
            notes.extend(await self.contract_after_standby(cfg, env_name))
        return notes

    async def contract_after_standby(self, cfg: Config, env_name: str) -> list[str]:
        """The standby window is over and the old color stopped: no old version can take
        traffic again, so the live release's held contract migrations run now."""
        ctx = self.ctx
        try:
            env = cfg.environment(env_name)
        except ConfigError:
            return []
        rows = ctx.store.instances(cfg.app.name, env_name)
        active = next((r for r in rows if r.role == "active" and r.deployment_id), None)
        if env.migrations is None or active is None or any(r.role == "standby" for r in rows):
            return []
        release = ctx.store.get_release(active.app, active.version)
        if release is None:
            return []
        migrator = Migrator(ctx, env, _quiet, active.deployment_id, {})
        try:
            with ctx.locks.hold(env_name, "contract migrations"):
                applied = await migrator.contract(ctx.tree(release))
        except Locked:
            return []  # a deployment runs there: it decides (its own contract step)
        except (*MIGRATION_ERRORS, EngineError) as exc:
            assert active.deployment_id is not None
            why = (
                f"contract migrations failed: {exc}; `conveyor migrate contract --env "
                f"{env_name}` runs them once fixed"
            )
            ctx.journal.record(active.deployment_id, "contract_failed", why)
            log.error("%s: %s", env_name, why)
            return [f"{env_name}: {why}"]
        if not applied:
            return []
        return [f"{env_name}: applied contract migrations {labels(applied)}"]

    async def watch_standby_window(self, cfg: Config) -> list[str]:
        """While the previous version is on standby, a failing new version is switched back.

        The bake is over, but a release that crashes, fails `unhealthy_threshold` health checks
        in a row, or fails its analysis (measured all through the window, engine/watch.py) while
        its predecessor still runs is rolled back automatically, not restarted.
        """
        ctx = self.ctx
        notes: list[str] = []
        rolled: set[str] = set()
        rows = ctx.store.instances(cfg.app.name)
        standby = {
            (r.environment, r.service)
            for r in rows
            if r.role == "standby" and await ctx.fleet.alive(r)
        }
        for row in rows:
            key = key_of(row)
            if row.role != "active" or (row.environment, row.service) not in standby:
                self.watch.pop(key, None)
                continue
            if ctx.locks.holder(row.environment) is not None:
                continue
            svc = _service_config(cfg, row)
            handle = ctx.fleet.handle(row)
            if svc is None or svc.kind != "web" or handle is None or handle.endpoint is None:
                continue
            if not (await ctx.fleet.state(handle)).alive:
                why = f"{row.service} {row.version} ({row.color}) exited during the standby window"
            else:
                ok, detail = await ctx.fleet.probe(svc, handle)
                failures = 0 if ok else self.watch.get(key, 0) + 1
                self.watch[key] = failures
                if failures < svc.health.unhealthy_threshold:
                    continue
                why = (
                    f"{row.service} {row.version} ({row.color}) failed {failures} health checks "
                    f"in a row during the standby window (last: {detail})"
                )
            self.watch.pop(key, None)
            current = self._current(key, handle)
            if current is None or current.role != "active" or ctx.locks.holder(row.environment):
                continue  # switched back meanwhile (its watcher was quicker)
            rolled.add(row.environment)
            notes.append(await self._switch_back(row.environment, why))
        notes.extend(await self._standby_analysis(cfg, rows, standby, rolled))
        return notes

    async def _standby_analysis(
        self,
        cfg: Config,
        rows: list[InstanceRecord],
        standby: set[tuple[str, str]],
        rolled: set[str],
    ) -> list[str]:
        ctx = self.ctx
        by_env: dict[str, list[InstanceRecord]] = {}
        for row in rows:
            svc = _service_config(cfg, row)
            if (
                row.role == "active"
                and (row.environment, row.service) in standby
                and svc is not None
                and svc.kind == "web"
                and row.environment not in rolled
                and ctx.locks.holder(row.environment) is None  # a deployment measures its own
            ):
                by_env.setdefault(row.environment, []).append(row)
        notes: list[str] = []
        for env_name, active in sorted(by_env.items()):
            try:
                env = cfg.environment(env_name)
                why = await self.standby_watch.keep(env, active)
            except (ConfigError, EngineError) as exc:
                log.error("cannot measure %s during the standby window: %s", env_name, exc)
                continue
            if why is not None:
                await self.standby_watch.drop(env_name)
                del by_env[env_name]
                notes.append(await self._switch_back(env_name, why))
        await self.standby_watch.drop_all_but(set(by_env))
        return notes

    async def _switch_back(self, env_name: str, why: str, died_at: float | None = None) -> str:
        log.warning("automatic rollback of %s: %s", env_name, why)
        try:
            outcome = await self.rollback(env_name, _quiet, f"automatic rollback: {why}", died_at)
            return f"{env_name}: {outcome.reason} ({why})"
        except EngineError as exc:
            return f"{env_name}: automatic rollback failed: {exc}"

    # --- when the agent stops -------------------------------------------------------------------

    async def shutdown(self, keep_running: bool) -> None:
        """Stop services and the router, unless they keep serving through an agent upgrade."""
        await self.standby_watch.drop_all_but(set())
        for _hid, task in self.exit_watchers.values():
            if task not in self.acting:
                task.cancel()  # what is stopped now must not be taken for a crash
        self.exit_watchers.clear()
        for timer in self.timers.values():
            timer.cancel()
        await asyncio.gather(*self.acting, *self.notifying, return_exceptions=True)
        if keep_running:
            return
        ctx = self.ctx
        app = ctx.project.known_app
        rows = ctx.store.instances(app) if app else []
        # The rows stay: they are the desired state a later `agent start` brings back.
        await asyncio.gather(*(ctx.fleet.halt(row, 10.0) for row in rows), return_exceptions=True)
        with contextlib.suppress(*ROUTER_ERRORS):
            await ctx.traffic.router.shutdown()


def _service_config(cfg: Config, row: InstanceRecord) -> ServiceConfig | None:
    try:
        return cfg.environment(row.environment).services.get(row.service)
    except ConfigError:
        return None
