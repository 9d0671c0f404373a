"""The rollout engine: one per agent. Owns the locks, the process handles and the route table.

A deployment in progress is a `Deployment` (engine/deployment.py) driving the pure state machine;
rollbacks and the supervisor live in engine/rollback.py and engine/supervisor.py. This module holds
what they share: configuration, spawning colors, pushing routes, and status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from conveyor.config import Config, ConfigError, ResolvedEnvironment, ServiceConfig, load_config
from conveyor.core import rollout as r
from conveyor.engine import rollback as rollback_mod
from conveyor.engine import supervisor
from conveyor.engine.deployment import Deployment
from conveyor.engine.errors import Refused, UserError
from conveyor.engine.outcome import Emit, Outcome
from conveyor.engine.routes import BackendSpec, RouteSpec, RouteTable, route_name
from conveyor.environ import inherited
from conveyor.health import probe_http
from conveyor.paths import Paths
from conveyor.releases import ReleaseError, ReleaseStore
from conveyor.routers.base import Backend, ProxyUnavailable, RouterError
from conveyor.routers.builtin import ProxyClient
from conveyor.runtimes.base import ColorSpec, Instance
from conveyor.runtimes.local import LocalRuntime, free_port
from conveyor.store.db import InstanceRecord, ReleaseRecord, Store

log = logging.getLogger("conveyor.engine")


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        self.now = monotonic
        self.busy: dict[str, str] = {}  # environment -> what is running there
        self.deployments: dict[str, Deployment] = {}  # environment -> deployment in progress
        self.handles: dict[tuple[str, str, str], Instance] = {}  # (env, service, color)
        self.restarts: dict[tuple[str, str, str], tuple[int, float]] = {}
        self.watch: dict[
            tuple[str, str, str], int
        ] = {}  # consecutive failed checks in standby window
        self._app: str | None = None

    utcnow = staticmethod(utcnow)

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

    def lock(self, env: str, what: str) -> None:
        if env in self.busy:
            raise Refused(
                f"a deployment to {env} is already in progress ({self.busy[env]}); "
                f"wait for it to finish or check `conveyor status --env {env}`"
            )
        self.busy[env] = what

    # --- deploy, promote, abort ---------------------------------------------------------------

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
        self.lock(env_name, f"{kind} of {version}")
        try:
            return await self._deploy(env, release, tree, emit, kind, reason)
        finally:
            self.busy.pop(env_name, None)
            self.deployments.pop(env_name, None)

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
        strategy = env.rollout.strategy
        emit(
            {
                "step": "started",
                "deployment": dep_id,
                "message": f"deploying {release.version} to {env.name} ({strategy}, "
                f"deployment #{dep_id})",
            }
        )
        dep = Deployment(self, dep_id, env, release, tree, emit, active, previous)
        self.deployments[env.name] = dep
        plans = []
        for name, svc in env.services.items():
            old = active.get(name)
            new_color = r.other_color(old.color if old else None)
            leftover = live.get((name, new_color))
            if leftover is not None:
                # The slot we need holds an older standby: it is replaced by this release.
                await self.stop_row(leftover, svc.stop_timeout)
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
        data: dict[str, Any] = {
            "environment": env.name,
            "version": release.version,
            "previous_version": previous,
            "strategy": strategy,
            "switch_ms": dep.switch_ms,
            "measurements": [m.to_json() for m in dep.measurements.values()],
        }
        if dep.failed_logs:
            data["logs"] = dep.failed_logs
        record = self.store.get_deployment(dep_id)
        return Outcome(
            0 if outcome == "succeeded" else 1,
            dep_id,
            outcome,
            record.reason if record else state.reason,
            data,
        )

    def _running(self, env_name: str) -> Deployment:
        self.environment(env_name)
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
        dep.queue.put_nowait(r.Promote(full, self.now()))
        return {"deployment": dep.id, "version": dep.release.version, "phase": str(dep.state.phase)}

    def abort(self, env_name: str, reason: str) -> dict[str, Any]:
        dep = self._running(env_name)
        dep.queue.put_nowait(r.Abort(reason, self.now()))
        return {"deployment": dep.id, "version": dep.release.version}

    async def rollback(self, env_name: str, emit: Emit) -> Outcome:
        return await rollback_mod.rollback(self, env_name, emit)

    # --- colors ---------------------------------------------------------------------------------

    def service_env(
        self,
        env: ResolvedEnvironment,
        name: str,
        svc: ServiceConfig | None,
        version: str,
        color: str,
    ) -> dict[str, str]:
        base = inherited()  # see conveyor.environ: never the operator's exports
        if svc is not None:
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

    def spawn(
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
        environ = self.service_env(env, name, svc, version, color)
        if port is not None:
            environ["PORT"] = str(port)
        spec = ColorSpec(
            app=env.app,
            environment=env.name,
            service=name,
            color=color,
            version=version,
            command=svc.command_for(port),
            cwd=(tree / svc.workdir).resolve(),
            env=environ,
            port=port,
            log_path=self.paths.service_log(env.name, name, color),
        )
        inst = self.runtime.start(spec)
        self.handles[(env.name, name, color)] = inst
        return inst

    def row(
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

    @staticmethod
    def with_changes(row: InstanceRecord, **changes: Any) -> InstanceRecord:
        return replace(row, **changes)

    async def stop_row(self, row: InstanceRecord, grace: float) -> None:
        key = (row.environment, row.service, row.color)
        inst = self.handles.pop(key, None) or self.instance(row)
        if inst is not None:
            await self.runtime.stop(inst, grace)
        self.store.delete_instance(row.app, row.environment, row.service, row.color)

    def instance(self, row: InstanceRecord) -> Instance | None:
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

    def alive(self, row: InstanceRecord) -> bool:
        inst = self.handles.get((row.environment, row.service, row.color)) or self.instance(row)
        return inst is not None and self.runtime.alive(inst)

    # --- routes ---------------------------------------------------------------------------------

    def route_for(self, env: ResolvedEnvironment, name: str, color: str, port: int) -> RouteSpec:
        svc = env.services[name]
        assert svc.port is not None
        return RouteSpec(
            name=route_name(env.name, name),
            host=svc.listen,
            port=svc.port,
            backends=(BackendSpec(color, "127.0.0.1", port, 100),),
            limits=env.proxy.model_dump(),
        )

    async def push(self, route: RouteSpec) -> None:
        await self.router.set_route(
            route.name,
            (route.host, route.port),
            [Backend(b.color, b.host, b.port, b.weight) for b in route.backends],
            route.limits,
            sticky=route.sticky,
        )
        self.routes.put(route)

    async def unroute(self, name: str) -> None:
        await self.router.remove_route(name)
        self.routes.remove(name)

    async def drain(self, env: ResolvedEnvironment, colors: tuple[tuple[str, str], ...]) -> int:
        """Wait until no request is in flight on these (service, color)s; return how many are left."""
        deadline = self.now() + env.rollout.drain_timeout
        pending = {(route_name(env.name, s), c) for s, c in colors}
        left = 0
        while pending and self.now() < deadline:
            try:
                stats = await self.router.stats()
            except (RouterError, ProxyUnavailable):
                break
            routes = stats.get("routes", {})
            counts = {
                (name, color): routes.get(name, {})
                .get("colors", {})
                .get(color, {})
                .get("inflight", 0)
                for name, color in pending
            }
            pending = {key for key, n in counts.items() if n > 0}
            left = sum(counts.values())
            if pending:
                await asyncio.sleep(0.02)
        return left if pending else 0

    # --- status -----------------------------------------------------------------------------

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
                    "running": self.alive(standby),
                    "port": standby.port,
                }
            services.append(entry)
        dep = self.deployments.get(env_name)
        return {
            "last_deployment": self._last(env_name),
            "environment": env_name,
            "app": self.app,
            "strategy": env.rollout.strategy,
            "deploying": self.busy.get(env_name),
            "deployment": dep.describe() if dep is not None else None,
            "services": services,
        }

    def _last(self, env_name: str) -> dict[str, Any] | None:
        """The latest finished deployment, with its final measurements: what status shows
        once nothing is in progress."""
        for d in self.store.list_deployments(self.app, env_name, limit=10):
            if d.outcome == "in_progress":
                continue
            events = self.store.events(d.id)
            analysis = [e for e in events if e.state == "analysis"]
            return {
                "id": d.id,
                "version": d.version,
                "outcome": d.outcome,
                "reason": d.reason,
                "finished_at": d.finished_at.isoformat() if d.finished_at else None,
                "measurements": analysis[-1].data.get("measurements", []) if analysis else [],
            }
        return None

    async def _healthy(self, svc: ServiceConfig, row: InstanceRecord) -> bool:
        if not self.alive(row):
            return False
        if svc.kind == "web" and row.port is not None:
            ok, _ = await probe_http("127.0.0.1", row.port, svc.health.path, svc.health.timeout)
            return ok
        return True

    # --- adoption and supervision (engine/supervisor.py) ---------------------------------------

    async def ensure_proxy(self) -> bool:
        return await supervisor.ensure_proxy(self)

    async def recover(self) -> list[str]:
        return await supervisor.recover(self)

    async def supervise_once(self) -> list[str]:
        return await supervisor.supervise_once(self)

    async def shutdown(self, keep_running: bool) -> None:
        await supervisor.shutdown(self, keep_running)
