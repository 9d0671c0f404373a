"""The rollout engine: drives the pure state machine through the runtime, the router and the store.

The core decides, the engine acts: every action the machine returns is performed here and its result
is fed back as an event. Every transition is persisted as a deployment event, so `history` can tell
why a deployment ended the way it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from conveyor.config import Config, ConfigError, ResolvedEnvironment, ServiceConfig, load_config
from conveyor.core import rollout as r
from conveyor.core.durations import format_duration
from conveyor.engine.errors import Refused, UserError
from conveyor.engine.routes import BackendSpec, RouteSpec, RouteTable, route_name
from conveyor.health import probe_http
from conveyor.paths import Paths
from conveyor.releases import ReleaseError, ReleaseStore
from conveyor.routers.base import Backend, ProxyUnavailable, RouterError
from conveyor.routers.builtin import ProxyClient, start_proxy
from conveyor.runtimes.base import ColorSpec, Instance, RuntimeStartError
from conveyor.runtimes.local import LocalRuntime, free_port, tail
from conveyor.store.db import InstanceRecord, ReleaseRecord, Store

log = logging.getLogger("conveyor.engine")

Emit = Callable[[dict[str, Any]], None]

# How often the engine wakes up while a rollout waits on health checks, to check start timeouts.
TICK = 0.05
LOG_TAIL_LINES = 8


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Outcome:
    exit_code: int
    deployment_id: int | None
    outcome: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment_id,
            "outcome": self.outcome,
            "reason": self.reason,
            **self.data,
        }


@dataclass
class _Run:
    """What one deployment in progress knows beyond the machine's state."""

    deployment_id: int
    env: ResolvedEnvironment
    release: ReleaseRecord
    tree: Path
    emit: Emit
    queue: asyncio.Queue[r.Event]
    old: dict[str, InstanceRecord]
    new: dict[str, Instance] = field(default_factory=dict)
    probers: list[asyncio.Task[None]] = field(default_factory=list)
    switch_ms: dict[str, float] = field(default_factory=dict)
    failed_logs: dict[str, list[str]] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        project_dir: Path,
        paths: Paths,
        store: Store,
        runtime: LocalRuntime | None = None,
        router: ProxyClient | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.project_dir = project_dir
        self.paths = paths
        self.store = store
        self.runtime = runtime or LocalRuntime()
        self.router = router or ProxyClient(paths.proxy_socket)
        self.routes = RouteTable(paths.home / "routes.json")
        self._monotonic = monotonic
        self._busy: dict[str, str] = {}  # environment -> what is running there
        self._handles: dict[tuple[str, str, str], Instance] = {}  # (env, service, color)
        self._restarts: dict[tuple[str, str, str], tuple[int, float]] = {}
        self._app: str | None = None

    # --- configuration ----------------------------------------------------------------------

    def config(self) -> Config:
        try:
            cfg = load_config(self.project_dir / "conveyor.toml")
        except ConfigError as exc:
            raise UserError(str(exc)) from exc
        self._app = cfg.app.name
        return cfg

    @property
    def app(self) -> str:
        if self._app is None:
            self.config()
        assert self._app is not None
        return self._app

    def environment(self, name: str) -> ResolvedEnvironment:
        try:
            return self.config().environment(name)
        except ConfigError as exc:
            raise UserError(str(exc)) from exc

    def _check_ports(self, env: ResolvedEnvironment) -> None:
        """Two environments of one app may run side by side, but not on the same public port."""
        for svc_name, svc in env.services.items():
            if svc.kind != "web":
                continue
            for route in self.routes.routes.values():
                other_env, other_svc = route.name.split("/", 1)
                if other_env == env.name:
                    continue
                if route.port == svc.port and route.host == svc.listen:
                    raise UserError(
                        f"{self.project_dir / 'conveyor.toml'}: services.{svc_name}.port: port "
                        f"{svc.port} is already served by environment {other_env!r} "
                        f"(service {other_svc}); set environments.{env.name}.services."
                        f"{svc_name}.port to another port"
                    )

    # --- deploy -----------------------------------------------------------------------------

    def _lock(self, env: str, what: str) -> None:
        if env in self._busy:
            raise Refused(
                f"a deployment to {env} is already in progress ({self._busy[env]}); "
                f"wait for it to finish or check `conveyor status --env {env}`"
            )
        self._busy[env] = what

    async def deploy(
        self,
        env_name: str,
        version: str,
        emit: Emit,
        kind: Literal["deploy", "rollback"] = "deploy",
        reason: str = "",
    ) -> Outcome:
        env = self.environment(env_name)
        release = self.store.get_release(self.app, version)
        if release is None:
            known = [rel.version for rel in self.store.list_releases(self.app)[:10]]
            hint = f" (known: {', '.join(known)})" if known else " (there are no releases yet)"
            raise UserError(
                f"unknown release {version!r}{hint}; create it with "
                f"`conveyor release create --version {version}`"
            )
        self._check_ports(env)
        try:
            tree = ReleaseStore(self.paths.home, self.store, self.app).tree(release)
        except ReleaseError as exc:
            raise UserError(str(exc)) from exc
        self._lock(env_name, f"{kind} of {version}")
        try:
            return await self._deploy(env, release, tree, emit, kind, reason)
        finally:
            self._busy.pop(env_name, None)

    async def _deploy(
        self,
        env: ResolvedEnvironment,
        release: ReleaseRecord,
        tree: Path,
        emit: Emit,
        kind: Literal["deploy", "rollback"],
        reason: str,
    ) -> Outcome:
        live = {(i.service, i.color): i for i in self.store.instances(self.app, env.name)}
        active = {i.service: i for i in live.values() if i.role == "active"}
        previous = next(iter(active.values())).version if active else None
        dep_id = self.store.create_deployment(
            self.app, env.name, release.version, kind, previous, utcnow(), reason=reason
        )
        emit(
            {
                "step": "started",
                "deployment": dep_id,
                "message": f"deploying {release.version} to {env.name} (deployment #{dep_id})",
            }
        )
        run = _Run(dep_id, env, release, tree, emit, asyncio.Queue(), old=active)
        plans = []
        for name, svc in env.services.items():
            old = active.get(name)
            new_color = r.other_color(old.color if old else None)
            leftover = live.get((name, new_color))
            if leftover is not None:
                # The slot we need holds an older standby: it is replaced by this release.
                await self._stop(leftover, svc.stop_timeout)
                self._record(run, "replaced", f"stopped {name} {leftover.version} ({new_color})")
            plans.append(
                r.ServicePlan(
                    name=name,
                    kind=svc.kind,
                    old_color=old.color if old else None,
                    new_color=new_color,
                    healthy_threshold=svc.health.healthy_threshold,
                    start_timeout=svc.health.start_timeout,
                )
            )
        state, actions = r.begin(tuple(plans), self._monotonic())
        try:
            state = await self._drive(run, state, actions)
        finally:
            for task in run.probers:
                task.cancel()
            await asyncio.gather(*run.probers, return_exceptions=True)
        outcome = "succeeded" if state.phase is r.Phase.SUCCEEDED else "failed"
        data: dict[str, Any] = {
            "environment": env.name,
            "version": release.version,
            "previous_version": previous,
            "switch_ms": run.switch_ms,
        }
        if run.failed_logs:
            data["logs"] = run.failed_logs
        final_reason = self.store.get_deployment(dep_id)
        return Outcome(
            0 if outcome == "succeeded" else 1,
            dep_id,
            outcome,
            final_reason.reason if final_reason else state.reason,
            data,
        )

    async def _drive(self, run: _Run, state: r.Rollout, actions: list[r.Action]) -> r.Rollout:
        await self._perform(run, state, actions)
        while not state.terminal:
            try:
                event: r.Event = await asyncio.wait_for(run.queue.get(), timeout=TICK)
            except TimeoutError:
                event = r.Tick(self._monotonic())
            state, actions = r.step(state, event)
            await self._perform(run, state, actions)
        return state

    async def _perform(self, run: _Run, state: r.Rollout, actions: list[r.Action]) -> None:
        for action in actions:
            if isinstance(action, r.Record):
                self._record(run, action.state, action.reason, action.service)
            elif isinstance(action, r.StartColor):
                self._start_new(run, action.service, action.color)
            elif isinstance(action, r.StopColor):
                await self._stop_color(run, action)
            elif isinstance(action, r.SwitchTraffic):
                await self._switch(run, state, action)
            elif isinstance(action, r.Drain):
                await self._drain(run, action)
            elif isinstance(action, r.Finish):
                reason = action.reason
                if action.outcome == "failed" and run.failed_logs:
                    reason += "".join(
                        f"\nlast output of {svc}:\n" + "\n".join(f"  {line}" for line in lines)
                        for svc, lines in run.failed_logs.items()
                    )
                self.store.finish_deployment(run.deployment_id, action.outcome, reason, utcnow())

    def _record(self, run: _Run, state: str, reason: str, service: str | None = None) -> None:
        data: dict[str, Any] = {"service": service} if service else {}
        self.store.add_event(run.deployment_id, state, reason, data, utcnow())
        run.emit({"step": state, "service": service, "message": reason})

    def _service_env(
        self, env: ResolvedEnvironment, name: str, svc: ServiceConfig, version: str, color: str
    ) -> dict[str, str]:
        base = dict(os.environ)
        for key in ("CONVEYOR_HOME", "CONVEYOR_DATABASE_URL"):
            base.pop(key, None)  # the app has no business with conveyor's own state
        base.update(svc.env)
        base.update(
            {
                "CONVEYOR_APP": env.app,
                "CONVEYOR_ENV": env.name,
                "CONVEYOR_SERVICE": name,
                "CONVEYOR_VERSION": version,
                "CONVEYOR_COLOR": color,
                "PYTHONUNBUFFERED": base.get("PYTHONUNBUFFERED", "1"),
            }
        )
        # Services find the Python conveyor runs on first, so `python3 app.py` works in a venv.
        base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
        return base

    def _spawn(
        self,
        env: ResolvedEnvironment,
        name: str,
        color: str,
        version: str,
        tree: Path,
        port: int | None = None,
    ) -> Instance:
        svc = env.services[name]
        if svc.kind == "web" and port is None:
            port = free_port("127.0.0.1")
        environ = self._service_env(env, name, svc, version, color)
        if port is not None:
            environ["PORT"] = str(port)
        command = svc.command.replace("{port}", str(port)) if port is not None else svc.command
        spec = ColorSpec(
            app=env.app,
            environment=env.name,
            service=name,
            color=color,
            version=version,
            command=command,
            cwd=(tree / svc.workdir).resolve(),
            env=environ,
            port=port,
            log_path=self.paths.service_log(env.name, name, color),
        )
        inst = self.runtime.start(spec)
        self._handles[(env.name, name, color)] = inst
        return inst

    def _start_new(self, run: _Run, name: str, color: str) -> None:
        svc = run.env.services[name]
        try:
            inst = self._spawn(run.env, name, color, run.release.version, run.tree)
        except (RuntimeStartError, OSError) as exc:
            run.queue.put_nowait(r.Crash(name, f"could not start: {exc}", self._monotonic()))
            return
        run.new[name] = inst
        self.store.upsert_instance(
            self._row(run.env.name, name, color, run.release, inst, "starting", run.deployment_id)
        )
        where = f" on 127.0.0.1:{inst.port}" if inst.port else ""
        run.emit(
            {
                "step": "started_process",
                "service": name,
                "message": f"{name} {run.release.version} ({color}) started, pid {inst.pid}{where}",
            }
        )
        run.probers.append(asyncio.create_task(self._probe_loop(run, name, svc, inst)))

    def _row(
        self,
        env: str,
        name: str,
        color: str,
        release: ReleaseRecord,
        inst: Instance,
        role: str,
        deployment_id: int | None,
        standby_until: datetime | None = None,
    ) -> InstanceRecord:
        return InstanceRecord(
            app=self.app,
            environment=env,
            service=name,
            color=color,
            version=release.version,
            digest=release.digest,
            role=role,
            pid=inst.pid,
            pgid=inst.pgid,
            port=inst.port,
            proc_start=inst.proc_start,
            started_at=datetime.fromtimestamp(inst.started_at, UTC),
            standby_until=standby_until,
            deployment_id=deployment_id,
        )

    async def _probe_loop(self, run: _Run, name: str, svc: ServiceConfig, inst: Instance) -> None:
        while True:
            if not self.runtime.alive(inst):
                run.failed_logs[name] = tail(inst.log_path, LOG_TAIL_LINES)
                detail = self.runtime.exit_detail(inst)
                run.queue.put_nowait(r.Crash(name, detail, self._monotonic()))
                return
            if svc.kind == "web" and inst.port is not None:
                ok, detail = await probe_http(
                    "127.0.0.1", inst.port, svc.health.path, svc.health.timeout
                )
            else:
                ok, detail = True, "running"
            if not ok:
                # Keep the latest output at hand: it is what the user needs if this never passes.
                run.failed_logs[name] = tail(inst.log_path, LOG_TAIL_LINES)
            else:
                run.failed_logs.pop(name, None)
            run.queue.put_nowait(r.Probe(name, ok, detail, self._monotonic()))
            await asyncio.sleep(svc.health.interval)

    async def _stop_color(self, run: _Run, action: r.StopColor) -> None:
        svc = run.env.services[action.service]
        new = run.new.get(action.service)
        if (
            new is not None
            and self._handles.get((run.env.name, action.service, action.color)) is new
        ):
            await self.runtime.stop(new, svc.stop_timeout)
            self._handles.pop((run.env.name, action.service, action.color), None)
            self.store.delete_instance(self.app, run.env.name, action.service, action.color)
            return
        old = run.old.get(action.service)
        if old is not None and old.color == action.color:
            await self._stop(old, svc.stop_timeout)
            self._record(
                run,
                "stopped",
                f"stopped {action.service} {old.version} ({old.color}): {action.reason}",
                action.service,
            )

    async def _stop(self, row: InstanceRecord, grace: float) -> None:
        key = (row.environment, row.service, row.color)
        inst = self._handles.pop(key, None) or self._instance(row)
        if inst is not None:
            await self.runtime.stop(inst, grace)
        self.store.delete_instance(row.app, row.environment, row.service, row.color)

    def _instance(self, row: InstanceRecord) -> Instance | None:
        if row.pid is None or row.proc_start is None:
            return None
        return Instance(
            pid=row.pid,
            pgid=row.pgid if row.pgid is not None else row.pid,
            port=row.port,
            proc_start=row.proc_start,
            started_at=row.started_at.timestamp(),
            log_path=self.paths.service_log(row.environment, row.service, row.color),
        )

    def _route_for(self, env: ResolvedEnvironment, name: str, color: str, port: int) -> RouteSpec:
        svc = env.services[name]
        assert svc.port is not None
        return RouteSpec(
            name=route_name(env.name, name),
            host=svc.listen,
            port=svc.port,
            backends=(BackendSpec(color, "127.0.0.1", port, 100),),
            limits=env.proxy.model_dump(),
        )

    async def _push(self, route: RouteSpec) -> None:
        await self.router.set_route(
            route.name,
            (route.host, route.port),
            [Backend(b.color, b.host, b.port, b.weight) for b in route.backends],
            route.limits,
        )
        self.routes.put(route)

    async def _switch(self, run: _Run, state: r.Rollout, action: r.SwitchTraffic) -> None:
        done: list[str] = []
        try:
            for name, color in action.routes:
                inst = run.new[name]
                assert inst.port is not None
                started = time.perf_counter()
                await self._push(self._route_for(run.env, name, color, inst.port))
                run.switch_ms[name] = round((time.perf_counter() - started) * 1000, 2)
                done.append(name)
        except (RouterError, ProxyUnavailable, OSError) as exc:
            await self._revert(run, done)
            run.queue.put_nowait(r.SwitchFailed(str(exc), self._monotonic()))
            return
        until = utcnow() + timedelta(seconds=run.env.rollout.standby)
        for svc_state in state.services:
            name, color = svc_state.plan.name, svc_state.plan.new_color
            self.store.upsert_instance(
                self._row(
                    run.env.name,
                    name,
                    color,
                    run.release,
                    run.new[name],
                    "active",
                    run.deployment_id,
                )
            )
            old = run.old.get(name)
            if old is not None and svc_state.plan.kind == "web":
                self.store.upsert_instance(_with(old, role="standby", standby_until=until))
        if run.old:
            self._record(
                run,
                "standby",
                f"previous version on standby until {until:%H:%M:%S} UTC "
                f"({format_duration(run.env.rollout.standby)})",
            )
        run.queue.put_nowait(r.Switched(self._monotonic()))

    async def _revert(self, run: _Run, names: list[str]) -> None:
        for name in names:
            old = run.old.get(name)
            try:
                if old is not None and old.port is not None:
                    await self._push(self._route_for(run.env, name, old.color, old.port))
                else:
                    await self.router.remove_route(route_name(run.env.name, name))
                    self.routes.remove(route_name(run.env.name, name))
            except (RouterError, ProxyUnavailable, OSError) as exc:  # pragma: no cover - logged
                log.error("could not revert route %s: %s", name, exc)

    async def _drain(self, run: _Run, action: r.Drain) -> None:
        if action.colors:
            deadline = self._monotonic() + run.env.rollout.drain_timeout
            pending = {(route_name(run.env.name, s), c) for s, c in action.colors}
            while pending and self._monotonic() < deadline:
                try:
                    stats = await self.router.stats()
                except (RouterError, ProxyUnavailable):
                    break
                routes = stats.get("routes", {})
                pending = {
                    (name, color)
                    for name, color in pending
                    if routes.get(name, {}).get("colors", {}).get(color, {}).get("inflight", 0) > 0
                }
                if pending:
                    await asyncio.sleep(0.02)
            left = f"; {len(pending)} still in flight after the drain timeout" if pending else ""
            self._record(run, "drained", f"in-flight requests on the old colors finished{left}")
        run.queue.put_nowait(r.Drained(self._monotonic()))

    # --- rollback ---------------------------------------------------------------------------

    async def rollback(self, env_name: str, emit: Emit) -> Outcome:
        env = self.environment(env_name)
        rows = self.store.instances(self.app, env_name)
        live = tuple(
            r.LiveColor(
                row.service,
                env.services[row.service].kind if row.service in env.services else "web",
                row.color,
                row.version,
                "standby" if row.role == "standby" else "active",
                self._alive(row),
            )
            for row in rows
            if row.role in ("active", "standby")
        )
        current = next((row.version for row in rows if row.role == "active"), None)
        plan = r.plan_rollback(live, self._previous_version(env_name, current))
        if plan.mode == "none":
            raise Refused(f"cannot roll back {env_name}: {plan.reason}")
        assert plan.version is not None
        if plan.mode == "redeploy":
            emit({"step": "plan", "message": plan.reason})
            outcome = await self.deploy(
                env_name, plan.version, emit, kind="rollback", reason=plan.reason
            )
            if outcome.exit_code == 0:
                self._mark_rolled_back(env_name, current, outcome.deployment_id)
            return outcome
        self._lock(env_name, f"rollback to {plan.version}")
        try:
            return await self._switch_back(env, rows, plan, current, emit)
        finally:
            self._busy.pop(env_name, None)

    def _previous_version(self, env: str, current: str | None) -> str | None:
        for dep in self.store.list_deployments(self.app, env, limit=200):
            if dep.outcome == "succeeded" and dep.version != current:
                return dep.version
        return None

    def _mark_rolled_back(self, env: str, version: str | None, by: int | None) -> None:
        for dep in self.store.list_deployments(self.app, env, limit=200):
            if dep.id == by:
                continue
            if dep.version == version and dep.outcome == "succeeded":
                self.store.set_outcome(dep.id, "rolled_back", f"rolled back by deployment #{by}")
                return

    async def _switch_back(
        self,
        env: ResolvedEnvironment,
        rows: list[InstanceRecord],
        plan: r.RollbackPlan,
        current: str | None,
        emit: Emit,
    ) -> Outcome:
        assert plan.version is not None
        dep_id = self.store.create_deployment(
            self.app, env.name, plan.version, "rollback", current, utcnow(), reason=plan.reason
        )
        release = self.store.get_release(self.app, plan.version)
        assert release is not None
        run = _Run(dep_id, env, release, Path(), emit, asyncio.Queue(), old={})
        self._record(run, "rollback", plan.reason)
        by_key = {(row.service, row.color): row for row in rows}
        switch_ms: dict[str, float] = {}
        replaced: list[InstanceRecord] = []
        for service, color in plan.switch:
            standby = by_key[(service, color)]
            assert standby.port is not None
            started = time.perf_counter()
            try:
                await self._push(self._route_for(env, service, color, standby.port))
            except (RouterError, ProxyUnavailable, OSError) as exc:
                reason = f"switching {service} back failed: {exc}"
                self.store.finish_deployment(dep_id, "failed", reason, utcnow())
                return Outcome(1, dep_id, "failed", reason)
            switch_ms[service] = round((time.perf_counter() - started) * 1000, 2)
            self.store.upsert_instance(
                _with(standby, role="active", standby_until=None, deployment_id=dep_id)
            )
            replaced.extend(row for row in rows if row.service == service and row.role == "active")
        self._record(run, "switched", f"traffic is back on {plan.version}")
        # Workers have no standby: start the rolled-back version beside the current one, then swap.
        tree: Path | None = None
        for row in rows:
            svc = env.services.get(row.service)
            if (
                svc is None
                or svc.kind != "worker"
                or row.role != "active"
                or row.version == plan.version
            ):
                continue
            tree = tree or ReleaseStore(self.paths.home, self.store, self.app).tree(release)
            color = r.other_color(row.color)
            inst = self._spawn(env, row.service, color, plan.version, tree)
            self.store.upsert_instance(
                self._row(env.name, row.service, color, release, inst, "active", dep_id)
            )
            replaced.append(row)
            self._record(
                run, "started", f"{row.service} {plan.version} ({color}) started", row.service
            )
        await self._drain(
            run, r.Drain(tuple((row.service, row.color) for row in replaced if row.port))
        )
        with contextlib.suppress(asyncio.QueueEmpty):
            run.queue.get_nowait()
        for row in replaced:
            svc = env.services.get(row.service)
            await self._stop(row, svc.stop_timeout if svc else 10.0)
            self._record(
                run, "stopped", f"stopped {row.service} {row.version} ({row.color})", row.service
            )
        reason = f"rolled back to {plan.version}"
        self.store.finish_deployment(dep_id, "succeeded", reason, utcnow())
        self._mark_rolled_back(env.name, current, dep_id)
        return Outcome(
            0,
            dep_id,
            "succeeded",
            reason,
            {
                "environment": env.name,
                "version": plan.version,
                "previous_version": current,
                "switch_ms": switch_ms,
            },
        )

    # --- status -----------------------------------------------------------------------------

    def _alive(self, row: InstanceRecord) -> bool:
        inst = self._handles.get((row.environment, row.service, row.color)) or self._instance(row)
        return inst is not None and self.runtime.alive(inst)

    async def status(self, env_name: str) -> dict[str, Any]:
        env = self.environment(env_name)
        rows = self.store.instances(self.app, env_name)
        services = []
        for name, svc in env.services.items():
            active = next((x for x in rows if x.service == name and x.role == "active"), None)
            standby = next((x for x in rows if x.service == name and x.role == "standby"), None)
            entry: dict[str, Any] = {
                "name": name,
                "kind": svc.kind,
                "active": None,
                "standby": None,
                "url": f"http://{svc.listen}:{svc.port}" if svc.kind == "web" else None,
            }
            if active is not None:
                entry["active"] = {
                    "version": active.version,
                    "color": active.color,
                    "healthy": await self._healthy(svc, active),
                    "pid": active.pid,
                    "port": active.port,
                    "since": active.started_at.isoformat(),
                }
            if standby is not None:
                entry["standby"] = {
                    "version": standby.version,
                    "color": standby.color,
                    "until": standby.standby_until.isoformat() if standby.standby_until else None,
                    "running": self._alive(standby),
                    "port": standby.port,
                }
            services.append(entry)
        return {
            "environment": env_name,
            "app": self.app,
            "deploying": self._busy.get(env_name),
            "services": services,
        }

    async def _healthy(self, svc: ServiceConfig, row: InstanceRecord) -> bool:
        if not self._alive(row):
            return False
        if svc.kind == "web" and row.port is not None:
            ok, _ = await probe_http("127.0.0.1", row.port, svc.health.path, svc.health.timeout)
            return ok
        return True

    # --- adoption and supervision -------------------------------------------------------------

    async def ensure_proxy(self) -> bool:
        """Adopt the running proxy, or start one and give it the last route table. True if started."""
        try:
            await self.router.ping()
            return False
        except ProxyUnavailable:
            pass
        start_proxy(
            self.paths.home, self.paths.proxy_socket, self.paths.proxy_pidfile, self.paths.proxy_log
        )
        for route in list(self.routes.routes.values()):
            try:
                await self._push(route)
            except (RouterError, ProxyUnavailable) as exc:
                log.error("could not restore route %s: %s", route.name, exc)
        return True

    async def recover(self) -> list[str]:
        """Called once when the agent starts: adopt what still runs, bring back what is missing."""
        notes: list[str] = []
        self.routes.load()
        if await self.ensure_proxy():
            notes.append("started the proxy and restored its routes")
        else:
            notes.append("adopted the running proxy")
        try:
            cfg = self.config()
        except UserError as exc:
            notes.append(f"cannot read the configuration, services were not checked: {exc}")
            return notes
        for dep in self._in_progress(cfg):
            self.store.finish_deployment(
                dep.id, "aborted", "interrupted: the agent stopped during the deployment", utcnow()
            )
            notes.append(f"deployment #{dep.id} was interrupted by an agent restart: aborted")
        for row in self.store.instances(cfg.app.name):
            notes.extend(await self._recover_instance(cfg, row))
        return notes

    def _in_progress(self, cfg: Config) -> list[Any]:
        found = []
        for env in self._known_environments(cfg):
            dep = self.store.in_progress(cfg.app.name, env)
            if dep is not None:
                found.append(dep)
        return found

    def _known_environments(self, cfg: Config) -> set[str]:
        envs = set(cfg.environments) or {"dev"}
        envs.update(row.environment for row in self.store.instances(cfg.app.name))
        return envs

    async def _recover_instance(self, cfg: Config, row: InstanceRecord) -> list[str]:
        what = f"{row.environment}/{row.service} {row.version} ({row.color})"
        inst = self._instance(row)
        if row.role == "starting":
            # Its deployment died with the previous agent: it never took traffic.
            await self._stop(row, 5.0)
            return [f"stopped {what}: its deployment was interrupted"]
        if inst is not None and self.runtime.alive(inst):
            self._handles[(row.environment, row.service, row.color)] = inst
            return [f"adopted {what}, pid {row.pid}"]
        if row.role == "standby" and row.standby_until and row.standby_until <= utcnow():
            self.store.delete_instance(row.app, row.environment, row.service, row.color)
            return [f"dropped {what}: its standby time is over"]
        try:
            await self._restart(cfg.environment(row.environment), row)
        except (
            ConfigError,
            UserError,
            RuntimeStartError,
            ReleaseError,
            RouterError,
            ProxyUnavailable,
            OSError,
            KeyError,
        ) as exc:
            return [f"could not bring back {what}: {exc}"]
        return [f"restarted {what}: it was not running"]

    async def _restart(self, env: ResolvedEnvironment, row: InstanceRecord) -> None:
        release = self.store.get_release(row.app, row.version)
        if release is None:
            raise ReleaseError(f"release {row.version} is missing")
        tree = ReleaseStore(self.paths.home, self.store, row.app).tree(release)
        port = row.port
        if port is not None and not _port_free(port):
            port = None  # someone took it meanwhile: a fresh port, and the route follows
        inst = self._spawn(env, row.service, row.color, row.version, tree, port=port)
        self.store.upsert_instance(
            self._row(
                env.name,
                row.service,
                row.color,
                release,
                inst,
                row.role,
                row.deployment_id,
                row.standby_until,
            )
        )
        if (
            row.role == "active"
            and inst.port is not None
            and env.services[row.service].kind == "web"
        ):
            await self._push(self._route_for(env, row.service, row.color, inst.port))

    async def supervise_once(self) -> list[str]:
        """One pass of the supervisor: the proxy is up, active colors run, standby time is kept."""
        notes: list[str] = []
        try:
            if await self.ensure_proxy():
                notes.append("the proxy was not answering: restarted it and restored its routes")
        except (RouterError, OSError) as exc:
            notes.append(f"could not restart the proxy: {exc}")
        try:
            cfg = self.config()
        except UserError:
            return notes
        now = utcnow()
        for row in self.store.instances(cfg.app.name):
            if row.environment in self._busy or row.role == "starting":
                continue
            what = f"{row.environment}/{row.service} {row.version} ({row.color})"
            if row.role == "standby" and row.standby_until is not None and row.standby_until <= now:
                svc = self._service_config(cfg, row)
                await self._stop(row, svc.stop_timeout if svc else 10.0)
                notes.append(f"stopped standby {what}: its standby time is over")
            elif row.role == "active" and not self._alive(row):
                key = (row.environment, row.service, row.color)
                count, last = self._restarts.get(key, (0, 0.0))
                backoff = min(30.0, 0.5 * 2**count)
                if self._monotonic() - last < backoff:
                    continue
                self._restarts[key] = (count + 1, self._monotonic())
                try:
                    await self._restart(cfg.environment(row.environment), row)
                    notes.append(f"restarted {what}: it had exited")
                except (
                    ConfigError,
                    UserError,
                    RuntimeStartError,
                    ReleaseError,
                    RouterError,
                    ProxyUnavailable,
                    OSError,
                    KeyError,
                ) as exc:
                    notes.append(f"could not restart {what}: {exc}")
            elif row.role == "standby" and not self._alive(row):
                self.store.delete_instance(row.app, row.environment, row.service, row.color)
                notes.append(f"standby {what} exited: a rollback will redeploy instead")
        return notes

    def _service_config(self, cfg: Config, row: InstanceRecord) -> ServiceConfig | None:
        try:
            return cfg.environment(row.environment).services.get(row.service)
        except ConfigError:
            return None

    async def shutdown(self, keep_running: bool) -> None:
        """Stop services and the proxy, unless they should keep serving through an agent upgrade."""
        if keep_running:
            return
        cfg_app = self._app
        rows = self.store.instances(cfg_app) if cfg_app else []
        await asyncio.gather(*(self._stop_keep_row(row) for row in rows), return_exceptions=True)
        with contextlib.suppress(RouterError, ProxyUnavailable):
            await self.router.shutdown()

    async def _stop_keep_row(self, row: InstanceRecord) -> None:
        # The rows stay: they are the desired state a later `agent start` brings back.
        inst = self._handles.pop((row.environment, row.service, row.color), None) or self._instance(
            row
        )
        if inst is not None:
            await self.runtime.stop(inst, 10.0)


def _with(row: InstanceRecord, **changes: Any) -> InstanceRecord:
    return replace(row, **changes)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
