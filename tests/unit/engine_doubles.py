"""In-memory test doubles of `Runtime` and `Router`, and an engine wired to them.

They let the engine's decisions (deploy, canary, rollback, supervisor) be tested in milliseconds,
as httpx tests its client over a mock transport. The end-to-end tests in tests/integration run
the same engine against real processes and the real proxy; these come in addition, never instead.
"""

from __future__ import annotations

import asyncio
import itertools
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.config import HealthConfig, ResolvedEnvironment
from conveyor.engine.context import utcnow
from conveyor.engine.engine import Engine
from conveyor.paths import Paths
from conveyor.releases import ReleaseStore
from conveyor.routers.base import ColorCounters, RouterError, Split
from conveyor.routers.kinds import FEATURES
from conveyor.runtimes.base import Endpoint, Handle, RunState, RuntimeStartError, Workload
from conveyor.store.db import Store


@dataclass
class Workloads:
    """What the fake runtime runs: each workload's handle, liveness and health."""

    started: list[Workload] = field(default_factory=list)
    alive: dict[int, bool] = field(default_factory=dict)  # by workload id
    healthy: dict[int, bool] = field(default_factory=dict)  # by endpoint port
    stopped: list[int] = field(default_factory=list)
    fail_start: set[str] = field(default_factory=set)  # versions that cannot even start
    unhealthy_versions: set[str] = field(default_factory=set)  # start, never healthy


class MemoryRuntime:
    """`Runtime` whose workloads are entries in a dict; a test crashes one by flipping it."""

    name = "memory"

    def __init__(self, watch: bool = True) -> None:
        self.w = Workloads()
        self._ids = itertools.count(1)
        self.by_id: dict[int, Workload] = {}
        self.watch = watch  # False: a runtime that cannot tell of an exit (an old kernel)
        self.ended: dict[int, tuple[str, float]] = {}  # how and when each one ended
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}

    async def start(self, w: Workload) -> Handle:
        if w.version in self.w.fail_start:
            raise RuntimeStartError(f"cannot start {w.version}")
        n = next(self._ids)
        self.w.started.append(w)
        self.by_id[n] = w
        self.w.alive[n] = True
        port = 20000 + n if w.port is not None else None
        if port is not None:
            self.w.healthy[port] = w.version not in self.w.unhealthy_versions
        return Handle(
            runtime=self.name,
            ref={"id": n},
            endpoints=(Endpoint("mem", port),) if port is not None else (),
            started_at=float(n),
        )

    async def adopt(self, h: Handle) -> Handle | None:
        return h if h.runtime == self.name and self.w.alive.get(int(h.ref["id"])) else None

    async def state(self, h: Handle) -> RunState:
        n = int(h.ref["id"])
        if self.w.alive.get(n, False):
            return RunState(True, "running")
        return RunState(False, self.ended.get(n, ("exited with code 1", 0.0))[0])

    async def exited(self, h: Handle) -> RunState | None:
        if not self.watch:
            return None
        n = int(h.ref["id"])
        if self.w.alive.get(n, False):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(n, []).append(waiter)
            await waiter
        detail, at = self.ended.get(n, ("exited with code 1", 0.0))
        return RunState(False, detail, at or None)

    async def stop(self, h: Handle, grace: float) -> None:
        n = int(h.ref["id"])
        if self.w.alive.get(n):
            self.w.stopped.append(n)
            self._end(n, "killed by SIGTERM")
            await asyncio.sleep(0)  # a real stop takes time: whoever watches it hears of it

    def _end(self, n: int, detail: str) -> None:
        self.w.alive[n] = False
        self.ended[n] = (detail, time.time())
        for waiter in self._waiters.pop(n, []):
            # A waiter of an event loop that is gone (an earlier asyncio.run) waits no more.
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result(None)

    async def logs(self, h: Handle, follow: bool) -> AsyncIterator[bytes]:
        yield f"workload {h.ref['id']}\n".encode()

    def tail(self, h: Handle, lines: int) -> list[str]:
        return [f"workload {h.ref['id']} said goodbye"][-lines:] if lines else []

    # --- what tests look at and do --------------------------------------------------------------

    def running(self) -> list[tuple[str, str, str]]:
        """(service, color, version) of every live workload."""
        return sorted(
            (w.service, w.color, w.version) for n, w in self.by_id.items() if self.w.alive[n]
        )

    def crash(self, version: str, service: str = "web", detail: str = "exited with code 1") -> None:
        for n, w in self.by_id.items():
            if w.version == version and w.service == service and self.w.alive[n]:
                self._end(n, detail)

    def sicken(self, version: str) -> None:
        """Every color of `version` fails its health checks from now on."""
        self.w.unhealthy_versions.add(version)
        for n, w in self.by_id.items():
            if w.version == version and w.port is not None:
                self.w.healthy[20000 + n] = False

    async def probe(self, endpoint: Endpoint, health: HealthConfig) -> tuple[bool, str]:
        ok = self.w.healthy.get(endpoint.port, False)
        return ok, "HTTP 200" if ok else "HTTP 503"


class MemoryRouter:
    """`Router` keeping its splits in a dict; counters and in-flight counts set by the test."""

    name = "memory"

    def __init__(self, features: frozenset[str] = FEATURES) -> None:
        self.features = features
        self.splits: dict[str, Split] = {}
        self.applied: list[Split] = []
        self.counts: dict[str, dict[str, ColorCounters]] = {}
        self.in_flight: dict[tuple[str, str], int] = {}
        self.refuse: str | None = None  # make apply() fail with this message
        self.restarted = False

    def options(self, env: ResolvedEnvironment) -> Mapping[str, Any]:
        return {"env": env.name}

    async def ensure(self) -> bool:
        if self.restarted:
            self.restarted = False
            self.splits.clear()
            return True
        return False

    async def apply(self, split: Split) -> None:
        if self.refuse is not None:
            raise RouterError(self.refuse)
        self.splits[split.route] = split
        self.applied.append(split)

    async def remove(self, route: str) -> None:
        self.splits.pop(route, None)

    async def inflight(self, route: str, color: str) -> int | None:
        return self.in_flight.get((route, color), 0)

    async def counters(self, route: str) -> Mapping[str, ColorCounters] | None:
        if route not in self.splits:
            return None
        return self.counts.get(route, {})

    async def shutdown(self) -> None:
        self.splits.clear()

    # --- what tests look at ---------------------------------------------------------------------

    def weights(self, route: str = "dev/web") -> dict[str, int]:
        return {b.color: b.weight for b in self.splits[route].backends}

    def serve(self, color: str, ok: int, errors: int, route: str = "dev/web") -> None:
        """Add `ok` 2xx and `errors` 5xx responses to a color's counters."""
        c = self.counts.setdefault(route, {}).setdefault(color, _empty())
        c["requests"] += ok + errors
        c["responses"]["2xx"] = c["responses"].get("2xx", 0) + ok
        c["responses"]["5xx"] = c["responses"].get("5xx", 0) + errors
        done = sum(c["responses"].values())
        c["latency_buckets"] = [("0.01", done), ("+Inf", done)]


def _empty() -> ColorCounters:
    return {
        "requests": 0,
        "responses": {},
        "upstream_errors": 0,
        "inflight": 0,
        "latency_buckets": [("0.01", 0), ("+Inf", 0)],
        "latency_sum": 0.0,
    }


FAST = """
[app]
name = "shop"

[services.web]
command = "serve --port {port}"
port = 18080
health = { interval = "10ms", healthy_threshold = 2, unhealthy_threshold = 2, start_timeout = "2s" }
stop_timeout = "1s"

[rollout]
bake = "300ms"
drain_timeout = "200ms"
standby = "10m"
on_inconclusive = "pass"
"""


@dataclass
class Rig:
    engine: Engine
    runtime: MemoryRuntime
    router: MemoryRouter
    store: Store
    dir: Path
    events: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def release(self, version: str) -> None:
        src = self.dir / "src"
        src.mkdir(exist_ok=True)
        (src / "VERSION").write_text(version)
        ReleaseStore(self.engine.ctx.paths.home, self.store, "shop").create(
            src, version, datetime.now(UTC)
        )

    def configure(self, extra: str = "", base: str = FAST) -> None:
        (self.dir / "conveyor.toml").write_text(textwrap.dedent(base) + textwrap.dedent(extra))

    def roles(self, env: str = "dev") -> list[tuple[str, str, str, str]]:
        """(service, color, version, role) of every recorded color."""
        return [(r.service, r.color, r.version, r.role) for r in self.store.instances("shop", env)]

    def outcomes(self, env: str = "dev") -> list[tuple[str, str, str]]:
        """(version, kind, outcome) of the deployments, oldest first."""
        deps = self.store.list_deployments("shop", env)
        return [(d.version, d.kind, d.outcome) for d in reversed(deps)]


def make_rig(
    tmp: Path, extra: str = "", base: str = FAST, wall: Callable[[], datetime] = utcnow
) -> Rig:
    """`wall`: the wall clock the engine records and times standby windows by."""
    home = tmp / ".conveyor"
    paths = Paths(home)
    paths.ensure()
    store = Store.open("sqlite://")
    runtime = MemoryRuntime()
    router = MemoryRouter()
    engine = Engine(
        tmp, paths, store, runtime=runtime, router=router, probe=runtime.probe, wall=wall
    )
    rig = Rig(engine, runtime, router, store, tmp)
    rig.configure(extra, base)
    return rig


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for a condition the engine makes true (bounded; polls, never relies on a sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(_wrap(coro))


async def _wrap(coro: Awaitable[Any]) -> Any:
    return await coro
