"""Deploys waiting for approval: asked for through the API, refused only because the
environment's approvals are not met yet. The approvals inbox and the dashboard show them; a
deploy of the same version to the same environment through the API, or a rejection, ends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from conveyor.store.db import Store
from conveyor.store.models import DeploymentRequestRow

WAITING = "waiting"
STARTED = "started"
REJECTED = "rejected"


@dataclass(frozen=True)
class RequestRecord:
    id: int
    app: str
    environment: str
    version: str
    requested_by: str
    token_id: str | None
    reason: str
    state: str
    deployment_id: int | None
    created_at: datetime
    updated_at: datetime

    @property
    def ref(self) -> str:
        """How the API names it where a deployment id goes: `r<id>`."""
        return f"r{self.id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.ref,
            "environment": self.environment,
            "version": self.version,
            "requested_by": self.requested_by,
            "token_id": self.token_id,
            "reason": self.reason,
            "state": self.state,
            "deployment_id": self.deployment_id,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _record(row: DeploymentRequestRow) -> RequestRecord:
    return RequestRecord(
        id=row.id,
        app=row.app,
        environment=row.environment,
        version=row.version,
        requested_by=row.requested_by,
        token_id=row.token_id,
        reason=row.reason,
        state=row.state,
        deployment_id=row.deployment_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def add(
    store: Store,
    app: str,
    environment: str,
    version: str,
    requested_by: str,
    token_id: str | None,
    reason: str,
    at: datetime,
) -> RequestRecord:
    """A waiting request; the one already waiting for the same version and environment is
    returned instead of a second one."""
    with store.writing() as session:
        row = session.scalars(
            select(DeploymentRequestRow).where(
                DeploymentRequestRow.app == app,
                DeploymentRequestRow.state == WAITING,
                DeploymentRequestRow.environment == environment,
                DeploymentRequestRow.version == version,
            )
        ).first()
        if row is None:
            row = DeploymentRequestRow(
                app=app,
                environment=environment,
                version=version,
                requested_by=requested_by,
                token_id=token_id,
                reason=reason,
                state=WAITING,
                deployment_id=None,
                created_at=at,
                updated_at=at,
            )
            session.add(row)
            session.flush()
        return _record(row)


def get(store: Store, request_id: int) -> RequestRecord | None:
    with store.reading() as session:
        row = session.get(DeploymentRequestRow, request_id)
        return _record(row) if row is not None else None


def waiting(store: Store, app: str, environment: str | None = None) -> list[RequestRecord]:
    """The requests still waiting, oldest first (indexed on app, state, environment)."""
    with store.reading() as session:
        return waiting_in(session, app, environment)


def waiting_in(session: Session, app: str, environment: str | None = None) -> list[RequestRecord]:
    """`waiting`, in the caller's read transaction."""
    query = select(DeploymentRequestRow).where(
        DeploymentRequestRow.app == app, DeploymentRequestRow.state == WAITING
    )
    if environment is not None:
        query = query.where(DeploymentRequestRow.environment == environment)
    return [_record(r) for r in session.scalars(query.order_by(DeploymentRequestRow.id))]


def end(
    store: Store,
    app: str,
    environment: str,
    version: str,
    state: str,
    at: datetime,
    deployment_id: int | None = None,
) -> int:
    """End the waiting requests for `version` in `environment` (started or rejected)."""
    with store.writing() as session:
        result = session.execute(
            update(DeploymentRequestRow)
            .where(
                DeploymentRequestRow.app == app,
                DeploymentRequestRow.state == WAITING,
                DeploymentRequestRow.environment == environment,
                DeploymentRequestRow.version == version,
            )
            .values(state=state, deployment_id=deployment_id, updated_at=at)
        )
        return int(getattr(result, "rowcount", 0) or 0)
