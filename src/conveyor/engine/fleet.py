"""The fleet: every color of every service of every environment, as runtime handles and rows.

It starts workloads through the runtime, records them in the store (role, version, handle as
JSON), finds them again after an agent restart, checks that they live and answer, and stops them.
Nothing here knows what kind of runtime runs them: addresses come from the handles' endpoints.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.config import HealthConfig, ResolvedEnvironment, ServiceConfig
from conveyor.engine.secrets import DeploySecrets
from conveyor.environ import inherited
from conveyor.health import probe_http
from conveyor.markers import for_start
from conveyor.runtimes.base import Endpoint, Handle, RunState, Runtime, Workload
from conveyor.secrets.base import SecretValue
from conveyor.store.db import InstanceRecord, ReleaseRecord, Store
from conveyor.store.images import workload_options

Key = tuple[str, str, str]  # (environment, service, color)
HandleId = tuple[str, tuple[tuple[str, str | int], ...]]
# Is the app answering on its endpoint? (ok, detail). Injected so tests can run without sockets.
Probe = Callable[[Endpoint, HealthConfig], Awaitable[tuple[bool, str]]]


async def probe_endpoint(endpoint: Endpoint, health: HealthConfig) -> tuple[bool, str]:
    return await probe_http(endpoint.host, endpoint.port, health.path, health.timeout)


def key_of(row: InstanceRecord) -> Key:
    return (row.environment, row.service, row.color)


def handle_id(handle: Handle) -> HandleId:
    """A handle as a dict key: the runtime's identity of the workload."""
    return (handle.runtime, tuple(sorted(handle.ref.items())))


class Fleet:
    def __init__(
        self,
        runtime: Runtime,
        store: Store,
        probe: Probe = probe_endpoint,
        project: str = "",
        secrets: DeploySecrets | None = None,
    ) -> None:
        self.runtime = runtime
        self.store = store
        # Resolving secrets, their files (as_file) and the redactor of everything shown.
        self.secrets = secrets or DeploySecrets(Path(os.devnull))
        self.probe_endpoint = probe
        # The project's marker (conveyor.markers): every workload carries it, so that its
        # processes are found even when the store no longer knows them.
        self.project = project
        # Handles this agent started or adopted; the store's rows are the desired state.
        self.handles: dict[Key, Handle] = {}
        # Workloads stopped on purpose: their exit is no crash, whoever watches them.
        self.stopping: set[HandleId] = set()

    # --- starting -----------------------------------------------------------------------------

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
        return base

    async def spawn(
        self,
        env: ResolvedEnvironment,
        name: str,
        color: str,
        version: str,
        tree: Path,
        port: int | None = 0,
        secrets: Mapping[str, SecretValue] | None = None,
        deployment_id: int | None = None,
    ) -> Handle:
        """Start one color; `port` 0 lets the runtime choose, a number asks for that one.

        `secrets` holds (at least) the values of the secrets the service names: they reach it
        through its environment, or files named there (as_file). SecretError if one is missing.
        """
        svc = env.services[name]
        carried, given = self.secrets.hand_over(env.name, name, color, svc, secrets or {})
        workload = Workload(
            app=env.app,
            environment=env.name,
            service=name,
            color=color,
            version=version,
            artifact=str(tree),
            command=svc.command,
            port=port if svc.kind == "web" else None,
            env={
                **self.service_env(env, name, svc, version, color),
                **carried,
                **for_start(self.project),
            },
            options={
                **svc.runtime_options(),
                "runtime": env.runtime.model_dump(),
                **workload_options(self.store, env.app, version, name),
                # Which deployment started it: container runtimes label their objects with it.
                "deployment_id": deployment_id,
            },
            secrets=given,
        )
        try:
            handle = await self.runtime.start(workload)
        except BaseException:
            self.secrets.remove(env.name, name, color)
            raise
        self.handles[(env.name, name, color)] = handle
        return handle

    def record(
        self,
        env: str,
        name: str,
        color: str,
        release: ReleaseRecord,
        handle: Handle,
        role: str,
        deployment_id: int | None,
        standby_until: datetime | None = None,
    ) -> InstanceRecord:
        row = InstanceRecord(
            app=release.app,
            environment=env,
            service=name,
            color=color,
            version=release.version,
            digest=release.digest,
            role=role,
            runtime=handle.runtime,
            handle=handle.to_json(),
            started_at=datetime.fromtimestamp(handle.started_at, UTC),
            standby_until=standby_until,
            deployment_id=deployment_id,
        )
        self.store.upsert_instance(row)
        return row

    def update(self, row: InstanceRecord, **changes: Any) -> InstanceRecord:
        """Change a recorded color (its role, standby time, deployment) and store it."""
        new = replace(row, **changes)
        self.store.upsert_instance(new)
        return new

    # --- finding and checking -------------------------------------------------------------------

    def handle(self, row: InstanceRecord) -> Handle | None:
        known = self.handles.get(key_of(row))
        if known is not None:
            return known
        return Handle.from_json(row.handle) if row.handle.get("ref") else None

    def endpoint(self, row: InstanceRecord) -> Endpoint | None:
        handle = self.handle(row)
        return handle.endpoint if handle is not None else None

    async def adopt(self, row: InstanceRecord) -> Handle | None:
        """Take over a color an earlier agent started, if that very workload still runs."""
        handle = self.handle(row)
        adopted = await self.runtime.adopt(handle) if handle is not None else None
        if adopted is not None:
            self.handles[key_of(row)] = adopted
        return adopted

    async def state(self, handle: Handle) -> RunState:
        return await self.runtime.state(handle)

    async def exited(self, handle: Handle) -> RunState | None:
        """Wait until the workload ends; None at once if the runtime cannot watch it."""
        return await self.runtime.exited(handle)

    async def alive(self, row: InstanceRecord) -> bool:
        handle = self.handle(row)
        return handle is not None and (await self.runtime.state(handle)).alive

    async def probe(self, svc: ServiceConfig, handle: Handle) -> tuple[bool, str]:
        """One health check: a web service must answer on its endpoint (or be ready, for a
        runtime that knows its readiness itself: RunState.ready), a worker must run."""
        endpoint = handle.endpoint
        if svc.kind == "web" and endpoint is not None:
            state = await self.runtime.state(handle)
            if state.ready is not None:
                return state.ready, state.detail
            return await self.probe_endpoint(endpoint, svc.health)
        return True, "running"

    async def healthy(self, svc: ServiceConfig, row: InstanceRecord) -> bool:
        handle = self.handle(row)
        if handle is None or not (await self.runtime.state(handle)).alive:
            return False
        return (await self.probe(svc, handle))[0]

    # --- stopping ---------------------------------------------------------------------------

    async def stop(self, row: InstanceRecord, grace: float) -> None:
        """Stop a recorded color and forget it."""
        handle = self.handles.pop(key_of(row), None) or self.handle(row)
        if handle is not None:
            await self._stop(handle, grace)
        self.secrets.remove(*key_of(row))
        self.store.delete_instance(row.app, row.environment, row.service, row.color)

    async def stop_started(self, app: str, key: Key, handle: Handle, grace: float) -> None:
        """Stop a color this agent started (it may not be recorded yet) and forget it."""
        await self._stop(handle, grace)
        self.secrets.remove(*key)
        if self.handles.get(key) is handle:
            self.handles.pop(key, None)
        self.store.delete_instance(app, *key)

    async def halt(self, row: InstanceRecord, grace: float) -> None:
        """Stop a color but keep its row: the desired state a later `agent start` restores."""
        handle = self.handles.pop(key_of(row), None) or self.handle(row)
        if handle is not None:
            await self._stop(handle, grace)
        self.secrets.remove(*key_of(row))

    async def _stop(self, handle: Handle, grace: float) -> None:
        self.stopping.add(handle_id(handle))
        await self.runtime.stop(handle, grace)
