"""What a runtime is: the records it works on and the protocol the engine drives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class RuntimeStartError(Exception):
    """The command could not even be spawned (missing cwd, unusable log file, ...)."""


@dataclass(frozen=True)
class ColorSpec:
    """Everything needed to start one color of one service.

    `command` already has `{port}` substituted and `env` is the complete environment:
    the runtime adds nothing to it, so what runs is exactly what the engine decided.
    """

    app: str
    environment: str
    service: str
    color: str
    version: str
    command: str
    cwd: Path
    env: dict[str, str]
    port: int | None
    log_path: Path


@dataclass(frozen=True)
class Instance:
    """A running (or once running) process, as recorded in the store.

    `proc_start` is the start time in clock ticks (field 22 of /proc/<pid>/stat). Together
    with the pid it identifies the process even after the pid has been reused, which is how a
    restarted agent tells its old processes from strangers.
    """

    pid: int
    pgid: int
    port: int | None
    proc_start: int
    started_at: float
    log_path: Path


class Runtime(Protocol):
    def start(self, spec: ColorSpec) -> Instance:
        """Start the process in its own session/process group, output appended to log_path."""
        ...

    def alive(self, inst: Instance) -> bool:
        """Reaps its own children; verifies proc_start for adopted ones."""
        ...

    async def stop(self, inst: Instance, grace: float) -> None:
        """SIGTERM to the group, wait up to `grace` seconds, then SIGKILL the group."""
        ...

    def exit_detail(self, inst: Instance) -> str:
        """ "exited with code 3" / "killed by SIGKILL" / "running" / "not running"."""
        ...
