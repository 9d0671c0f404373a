"""The journal: the one writer of deployments, their events and their outcomes.

Everything that happens to a deployment is appended here and nothing is rewritten: a deployment
gets its outcome once, and a later rollback of it is a new event on it, not an edit. That is what
makes the history trustworthy.

Beside it, `audit` appends to the audit log (conveyor.store.audit): who asked for what, and how
it ended, refusals included; each entry chained to the one before by its hash.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from conveyor import identity
from conveyor.engine.outcome import Emit
from conveyor.secrets.redact import Redactor
from conveyor.store import audit as audit_log
from conveyor.store.db import ROLLED_BACK, Store


class Journal:
    def __init__(
        self, store: Store, utcnow: Callable[[], datetime], redactor: Redactor | None = None
    ) -> None:
        self._store = store
        self._utcnow = utcnow
        # Every known secret value is replaced before anything is written or shown: reasons
        # quote hook and service output, and errors.
        self._redactor = redactor or Redactor()

    def open(
        self,
        app: str,
        environment: str,
        version: str,
        kind: str,
        previous_version: str | None,
        reason: str = "",
    ) -> int:
        """A new deployment, in progress; returns its id."""
        reason = self._redactor.text(reason)
        return self._store.create_deployment(
            app, environment, version, kind, previous_version, self._utcnow(), reason=reason
        )

    def redacted(self, text: str) -> str:
        return self._redactor.text(text)

    def record(
        self,
        deployment_id: int,
        state: str,
        reason: str,
        data: dict[str, Any] | None = None,
        emit: Emit | None = None,
        service: str | None = None,
    ) -> None:
        """Append an event; with `emit`, show it to whoever follows the deployment too."""
        payload: dict[str, Any] = self._redactor.data(dict(data or {}))
        reason = self._redactor.text(reason)
        if service:
            payload["service"] = service
        self._store.add_event(deployment_id, state, reason, payload, self._utcnow())
        if emit is not None:
            emit({"step": state, "service": service, "message": reason})

    def finish(self, deployment_id: int, outcome: str, reason: str) -> bool:
        """Give the deployment its outcome; False if it already had one (it keeps that one)."""
        reason = self._redactor.text(reason)
        return self._store.finish_deployment(deployment_id, outcome, reason, self._utcnow())

    def rolled_back(self, deployment_id: int, by: int | None, why: str = "") -> None:
        """Note on a succeeded deployment that deployment `by` rolled it back."""
        detail = f"rolled back by deployment #{by}" + (f": {why}" if why else "")
        self.record(deployment_id, ROLLED_BACK, detail, {"by": by})

    def mark_rolled_back(
        self, app: str, env: str, version: str | None, by: int | None, why: str = ""
    ) -> None:
        """The latest success of `version` in `env` (other than `by`) was rolled back by `by`."""
        for dep in self._store.list_deployments(app, env, limit=200):
            if dep.id == by:
                continue
            if dep.version == version and dep.outcome == "succeeded" and dep.kind != "stop":
                self.rolled_back(dep.id, by, why)
                return

    def audit(
        self,
        app: str,
        action: str,
        environment: str | None,
        target: str,
        outcome: str,
        detail: str = "",
        data: dict[str, Any] | None = None,
    ) -> int:
        """Append an audit entry for whoever the current request acts for (identity.actor()).
        `detail` and `data` must never hold a secret value."""
        return audit_log.record(
            self._store,
            at=self._utcnow(),
            actor=identity.actor(),
            action=action,
            app=app,
            environment=environment,
            target=target,
            outcome=outcome,
            detail=self._redactor.text(detail),
            data=self._redactor.data(data or {}),
        )
