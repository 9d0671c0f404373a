"""What a deployment, a rollback and the supervisor are handed: the engine's parts, not the engine.

Each part has one job: `project` reads the configuration, `fleet` starts, finds and stops colors
(through the runtime), `traffic` moves requests between them (through the router), `locks` keeps
one operation per environment, `journal` is the only writer of deployment history, and `clock`
is the only source of time (tests pass their own).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from conveyor.engine.errors import UserError
from conveyor.engine.fleet import Fleet
from conveyor.engine.journal import Journal
from conveyor.engine.locks import Locks
from conveyor.engine.project import ProjectConfig
from conveyor.engine.secrets import DeploySecrets
from conveyor.engine.traffic import Traffic
from conveyor.paths import Paths
from conveyor.releases import ReleaseError, ReleaseStore
from conveyor.store.db import ReleaseRecord, Store


def utcnow() -> datetime:
    return datetime.now(UTC)


def wall_time(at: float) -> str:
    """A moment as history tells it, to the millisecond: "12:00:01.230 UTC"."""
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3] + " UTC"


@dataclass(frozen=True)
class Clock:
    now: Callable[[], float] = time.monotonic  # for timers and durations
    utcnow: Callable[[], datetime] = utcnow  # for what is recorded


@dataclass(frozen=True)
class Context:
    project: ProjectConfig
    paths: Paths
    store: Store
    fleet: Fleet
    traffic: Traffic
    locks: Locks
    journal: Journal
    clock: Clock = field(default_factory=Clock)

    @property
    def secrets(self) -> DeploySecrets:
        """Resolving secrets, and the redactor every text shown or stored goes through."""
        return self.fleet.secrets

    def tree(self, release: ReleaseRecord) -> Path:
        """The release's files on disk, unpacked on first use."""
        try:
            return ReleaseStore(self.paths.home, self.store, release.app).tree(release)
        except ReleaseError as exc:
            raise UserError(str(exc)) from exc

    def deployment_log(self, environment: str, deployment_id: int) -> Path:
        return self.paths.logs / environment / "deployments" / f"{deployment_id}.log"
