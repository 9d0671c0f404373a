"""Which runtime runs a workload: chosen by name, one small factory per kind.

The engine holds one `Runtimes`, which is itself a `Runtime`: a workload goes to the runtime its
environment's configuration names (`Workload.options["runtime"]["kind"]`), and a handle goes back
to the runtime that made it (`Handle.runtime`), so colors started before a change of `[runtime]
kind` are still found, checked and stopped by their own runtime. Each runtime is made on first
use: a project on local processes never imports the Docker SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from conveyor.runtimes.base import Handle, RunState, Runtime, RuntimeStartError, Workload

# kind -> factory(log_dir, runtime settings from [runtime]). Each runtime's module adds itself
# here by name; imports stay inside the factories.
Factory = Callable[[Path, Mapping[str, Any]], Runtime]


def _local(log_dir: Path, settings: Mapping[str, Any]) -> Runtime:
    from conveyor.runtimes.local import LocalRuntime

    return LocalRuntime(log_dir)


def _kubernetes(log_dir: Path, settings: Mapping[str, Any]) -> Runtime:
    from conveyor.runtimes.kubernetes import KubernetesRuntime

    return KubernetesRuntime(settings)


def _docker(log_dir: Path, settings: Mapping[str, Any]) -> Runtime:
    from conveyor.runtimes.docker import DockerRuntime

    return DockerRuntime(log_dir, settings)


def _swarm(log_dir: Path, settings: Mapping[str, Any]) -> Runtime:
    from conveyor.runtimes.swarm import SwarmRuntime

    return SwarmRuntime(log_dir, settings)


FACTORIES: dict[str, Factory] = {
    "local": _local,
    "docker": _docker,
    "swarm": _swarm,
    "kubernetes": _kubernetes,
}


class Runtimes:
    """Every runtime kind behind the one `Runtime` protocol the engine knows."""

    name = "runtimes"

    def __init__(
        self,
        log_dir: Path,
        made: Mapping[str, Runtime] | None = None,
        factories: Mapping[str, Factory] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.factories = dict(factories or FACTORIES)
        self.made: dict[str, Runtime] = dict(made or {})
        self.settings: dict[str, Mapping[str, Any]] = {}

    def get(self, kind: str, settings: Mapping[str, Any] | None = None) -> Runtime:
        if settings is not None:
            self.settings[kind] = settings
        runtime = self.made.get(kind)
        if runtime is None:
            factory = self.factories.get(kind)
            if factory is None:
                raise RuntimeStartError(
                    f"unknown runtime {kind!r} (known: {', '.join(sorted(self.factories))})"
                )
            runtime = factory(self.log_dir, self.settings.get(kind, {}))
            self.made[kind] = runtime
        return runtime

    def of(self, h: Handle) -> Runtime:
        return self.get(h.runtime)

    async def start(self, w: Workload) -> Handle:
        settings = w.options.get("runtime") or {"kind": "local"}
        return await self.get(str(settings["kind"]), settings).start(w)

    async def adopt(self, h: Handle) -> Handle | None:
        if h.runtime not in self.factories and h.runtime not in self.made:
            return None
        return await self.of(h).adopt(h)

    async def state(self, h: Handle) -> RunState:
        return await self.of(h).state(h)

    async def exited(self, h: Handle) -> RunState | None:
        return await self.of(h).exited(h)

    async def stop(self, h: Handle, grace: float) -> None:
        await self.of(h).stop(h, grace)

    def logs(self, h: Handle, follow: bool) -> AsyncIterator[bytes]:
        return self.of(h).logs(h, follow)

    def tail(self, h: Handle, lines: int) -> list[str]:
        return self.of(h).tail(h, lines)
