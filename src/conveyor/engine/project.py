"""The project's configuration as the engine sees it: read afresh for every operation.

`conveyor.toml` may be edited while the agent runs; each deploy, rollback and supervisor pass reads
it again, and a broken file is the user's mistake (UserError, exit 2), reported with file:line:key.
"""

from __future__ import annotations

from pathlib import Path

from conveyor.config import Config, ConfigError, ResolvedEnvironment, load_config
from conveyor.engine.errors import UserError


class ProjectConfig:
    def __init__(self, project_dir: Path) -> None:
        self.dir = project_dir
        self.file = project_dir / "conveyor.toml"
        self._app: str | None = None

    def load(self) -> Config:
        try:
            cfg = load_config(self.file)
        except ConfigError as exc:
            raise UserError(str(exc)) from exc
        self._app = cfg.app.name
        return cfg

    @property
    def app(self) -> str:
        """The app's name (read once; the last one read if the file breaks later)."""
        if self._app is None:
            self.load()
        assert self._app is not None
        return self._app

    @property
    def known_app(self) -> str | None:
        """The app's name if it was read already; never reads the file."""
        return self._app

    def environment(self, name: str) -> ResolvedEnvironment:
        try:
            return self.load().environment(name)
        except ConfigError as exc:
            raise UserError(str(exc)) from exc
