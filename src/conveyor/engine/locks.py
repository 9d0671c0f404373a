"""One operation at a time per environment: a deployment, a rollback, a redeploy.

Held in the agent's memory today (one agent per project); the promotion issue moves it into the
database so that agents on several hosts share it. A second operation is refused at once, never
queued: the caller is told what holds the environment and how to follow it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from conveyor.engine.errors import Refused


class Locks:
    def __init__(self) -> None:
        self._held: dict[str, str] = {}  # environment -> what holds it

    @contextmanager
    def hold(self, env: str, what: str) -> Iterator[None]:
        if env in self._held:
            raise Refused(
                f"a deployment to {env} is already in progress ({self._held[env]}); "
                f"wait for it to finish or check `conveyor status --env {env}`"
            )
        self._held[env] = what
        try:
            yield
        finally:
            self._held.pop(env, None)

    def holder(self, env: str) -> str | None:
        """What holds `env` now, or None."""
        return self._held.get(env)
