"""What one `conveyor serve` process holds: the project, its configuration (read again when the
file changes), the state store, the agent client, and the server's settings.

The server is not the agent: it reads the same database and sends every action to the project's
agent over its socket, as the CLI does (starting the agent when none runs).
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.agent.client import AgentClient
from conveyor.config import Config, ConfigError, load_config
from conveyor.paths import Paths
from conveyor.store.db import Store, database_url

CONFIG_NAME = "conveyor.toml"


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    tls: bool = False  # the session cookie is Secure under TLS
    keepalive: float = 15.0  # seconds between `: keep-alive` comments on /events
    poll_interval: float = 0.05  # how often the one poller reads new events
    client_queue: int = 1000  # events buffered per SSE client before it is dropped as too slow
    start_timeout: float = 120.0  # how long a deploy request waits for the agent to name it
    # Move the start-up heap (imports, the configuration) out of the garbage collector's reach:
    # full collections over its ~140,000 objects were the overview's p99 (`conveyor serve`).
    freeze_heap: bool = False


@dataclass
class Server:
    """The server's long-lived parts; one per application (app.state.conveyor)."""

    settings: Settings
    paths: Paths
    store: Store
    key: bytes  # HMAC key of the CSRF tokens (kept in .conveyor/api.key, mode 0600)
    _config: tuple[tuple[int, int], Config] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings) -> Server:
        paths = Paths.for_project(settings.project_dir)
        paths.ensure()
        store = Store.open(database_url(paths.home, settings.project_dir / CONFIG_NAME))
        return cls(settings, paths, store, _key(paths.home / "api.key"))

    @property
    def config_file(self) -> Path:
        return self.settings.project_dir / CONFIG_NAME

    def config(self) -> Config:
        """conveyor.toml, parsed once per change of the file (ConfigError when it is broken)."""
        stat = self.config_file.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._config is not None and self._config[0] == stamp:
                return self._config[1]
        cfg = load_config(self.config_file)
        with self._lock:
            self._config = (stamp, cfg)
        return cfg

    def app_name(self) -> str:
        try:
            return self.config().app.name
        except (ConfigError, OSError):
            return self.settings.project_dir.name

    def admins(self) -> list[str]:
        try:
            return list(self.config().access.admins)
        except (ConfigError, OSError):
            return []

    def agent(self) -> AgentClient:
        return AgentClient(self.settings.project_dir, self.paths)

    def close(self) -> None:
        self.store.close()


def _key(path: Path) -> bytes:
    """The server's HMAC key: made once, kept so that a restart keeps pages' CSRF tokens valid."""
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        data = secrets.token_bytes(32)
        out.write(data)
    return data
