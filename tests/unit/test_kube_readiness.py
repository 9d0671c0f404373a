"""A runtime that knows readiness itself (RunState.ready) is the health check: the engine does not
probe its endpoint, which on a cluster is a Service address the agent's machine may not reach."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from conveyor.config import HealthConfig, ServiceConfig
from conveyor.engine.fleet import Fleet
from conveyor.runtimes.base import Endpoint, Handle, RunState, Workload


class ReadyRuntime:
    """Answers `state` with a readiness of its own, as the Kubernetes runtime does."""

    name = "ready"

    def __init__(self, ready: bool | None) -> None:
        self.ready = ready

    async def start(self, w: Workload) -> Handle:
        raise NotImplementedError

    async def adopt(self, h: Handle) -> Handle | None:
        return h

    async def state(self, h: Handle) -> RunState:
        return RunState(True, "1/2 replicas ready", ready=self.ready)

    async def exited(self, h: Handle) -> RunState | None:
        return None

    async def stop(self, h: Handle, grace: float) -> None:
        return None

    async def logs(self, h: Handle, follow: bool) -> AsyncIterator[bytes]:
        yield b""

    def tail(self, h: Handle, lines: int) -> list[str]:
        return []


HANDLE = Handle("ready", {"name": "web-blue"}, (Endpoint("web-blue.shop.svc", 8000),), 0.0)
WEB = ServiceConfig(kind="web", image="shop", port=8080)


def probe_with(ready: bool | None) -> tuple[tuple[bool, str], list[Endpoint]]:
    probed: list[Endpoint] = []

    async def probe(endpoint: Endpoint, health: HealthConfig) -> tuple[bool, str]:
        probed.append(endpoint)
        return True, "HTTP 200"

    fleet = Fleet(ReadyRuntime(ready), store=None, probe=probe)  # type: ignore[arg-type]
    return asyncio.run(fleet.probe(WEB, HANDLE)), probed


def test_runtime_readiness_replaces_the_http_probe() -> None:
    assert probe_with(False) == ((False, "1/2 replicas ready"), [])
    assert probe_with(True) == ((True, "1/2 replicas ready"), [])


def test_without_readiness_the_endpoint_is_probed() -> None:
    assert probe_with(None) == ((True, "HTTP 200"), [HANDLE.endpoints[0]])
