"""What a runtime is: the workload it is asked to run, the handle it gives back, its protocol.

A runtime runs one color of one service: a local process group today, a container or a cluster
deployment tomorrow. The engine knows nothing else about it: it hands over a `Workload`, keeps the
`Handle` (stored as JSON, so a restarted agent can find the workload again), reaches the app
through the handle's endpoints, and asks the runtime whether it still runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class RuntimeStartError(Exception):
    """The workload could not even be started (missing directory, unusable log file, ...)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a color's app answers, as the router and the health checks reach it."""

    host: str
    port: int


@dataclass(frozen=True)
class Workload:
    """What to run for one color of one service.

    `artifact` is what the release is made of (a source tree today, an image reference for
    containers). `command` may hold the `{port}` placeholder and `port` is the port the app
    should listen on: 0 lets the runtime choose, None means the service takes no traffic (a
    worker). `env` is the service's whole environment; the runtime adds only `PORT`.
    `options` are the runtime's own settings from the service's configuration. `secrets`
    (name -> value) are the secret values the workload was given, in `env` too (or in files
    whose paths are in `env`): a runtime replaces them in the logs it writes or shows, and
    never puts them on a command line.
    """

    app: str
    environment: str
    service: str
    color: str
    version: str
    artifact: str
    command: str | None
    port: int | None
    env: Mapping[str, str] = field(repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Handle:
    """How to find a started workload again, after an agent restart too.

    `ref` is the runtime's own identity of it (for local processes: pid, process group and
    kernel start time, so a stranger that got the pid is never taken for ours).
    """

    runtime: str
    ref: Mapping[str, str | int]
    endpoints: tuple[Endpoint, ...]
    started_at: float

    @property
    def endpoint(self) -> Endpoint | None:
        return self.endpoints[0] if self.endpoints else None

    @property
    def summary(self) -> str:
        """How people name it: "pid 4711", "container 3f2a…"."""
        for key in ("pid", "container", "name", "id"):
            if key in self.ref:
                return f"{key} {self.ref[key]}"
        return self.runtime

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "ref": dict(self.ref),
            "endpoints": [{"host": e.host, "port": e.port} for e in self.endpoints],
            "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Handle:
        return cls(
            runtime=str(data["runtime"]),
            ref=dict(data.get("ref", {})),
            endpoints=tuple(
                Endpoint(str(e["host"]), int(e["port"])) for e in data.get("endpoints", [])
            ),
            started_at=float(data.get("started_at", 0.0)),
        )


@dataclass(frozen=True)
class RunState:
    alive: bool
    detail: str  # "running", "exited with code 3", "killed by SIGKILL", "not running"
    # When it ended (seconds since the epoch), if the runtime saw it happen; None otherwise.
    ended_at: float | None = None
    # Whether the app is ready for traffic, when the runtime itself knows (a cluster's readiness
    # probe): then the engine takes this as the health check instead of probing the handle's
    # endpoints, which may not be reachable from the agent's machine (a Service's cluster
    # address). None: the runtime does not know; the engine probes the endpoint over HTTP.
    ready: bool | None = None


class Runtime(Protocol):
    """Starts, finds again, checks and stops workloads. Every call returns in bounded time."""

    name: str

    async def start(self, w: Workload) -> Handle:
        """Start the workload; raise RuntimeStartError if it cannot even be started."""
        ...

    async def adopt(self, h: Handle) -> Handle | None:
        """The handle if that very workload still runs (started by an earlier agent), else None."""
        ...

    async def state(self, h: Handle) -> RunState: ...

    async def exited(self, h: Handle) -> RunState | None:
        """Wait until the workload ends and say how (at once if it has ended already).

        This is how the engine knows of a crash when it happens, not on its next check. None,
        at once, when the runtime cannot watch this workload (the caller polls `state`).
        Cancelling the wait is safe; any number of callers may wait on one workload.
        """
        ...

    async def stop(self, h: Handle, grace: float) -> None:
        """Ask it to stop, wait up to `grace` seconds, then force it. Never signals a stranger."""
        ...

    def logs(self, h: Handle, follow: bool) -> AsyncIterator[bytes]:
        """Its output so far, then (with follow) what it writes next, until cancelled."""
        ...

    def tail(self, h: Handle, lines: int) -> list[str]:
        """The last lines of its output, for error messages."""
        ...
