"""Where conveyor keeps its state: one `.conveyor/` directory beside `conveyor.toml`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    home: Path

    @classmethod
    def for_project(cls, project_dir: Path) -> Paths:
        override = os.environ.get("CONVEYOR_HOME")
        home = Path(override) if override else project_dir / ".conveyor"
        return cls(home.resolve())

    @property
    def database(self) -> Path:
        return self.home / "state.db"

    @property
    def release_objects(self) -> Path:
        return self.home / "releases" / "objects"

    @property
    def release_trees(self) -> Path:
        return self.home / "releases" / "trees"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def service_log(self, environment: str, service: str, color: str) -> Path:
        return self.logs / environment / service / f"{color}.log"

    @property
    def agent_socket(self) -> Path:
        return self.home / "agent.sock"

    @property
    def agent_pidfile(self) -> Path:
        return self.home / "agent.pid"

    @property
    def agent_log(self) -> Path:
        return self.logs / "agent.log"

    @property
    def proxy_socket(self) -> Path:
        return self.home / "proxy.sock"

    @property
    def proxy_pidfile(self) -> Path:
        return self.home / "proxy.pid"

    @property
    def proxy_log(self) -> Path:
        return self.logs / "proxy.log"

    def ensure(self) -> None:
        # 0700: the sockets in here accept commands from whoever can reach them.
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs.mkdir(parents=True, exist_ok=True)
