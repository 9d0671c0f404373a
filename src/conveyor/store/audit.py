"""The audit log in the state database: appended inside the caller's write transaction.

Appends serialize on one key (`serialize`: the write lock on SQLite, an advisory lock on
PostgreSQL), so two processes appending at once cannot both chain to the same predecessor.
The chain itself is conveyor.core.audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from conveyor.core.audit import FIELDS, GENESIS, Break, entry_hash, verify
from conveyor.store.db import Store, serialize
from conveyor.store.models import AuditRow

OUTCOMES = frozenset({"ok", "refused", "failed"})
# pg_advisory_xact_lock key of audit appends ("audt").
_AUDIT_KEY = 0x61756474


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str  # deploy, rollback, abort, promote, lock, unlock, lock.takeover, ...
    app: str
    environment: str | None
    target: str  # what was acted on: a version, a lock, a deployment
    outcome: str  # ok, refused, failed
    detail: str
    data: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*FIELDS, "prev_hash", "hash")} | {
            "at": self.at.isoformat()
        }


def _fields(row: AuditRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at.isoformat(),
        "actor": row.actor,
        "action": row.action,
        "app": row.app,
        "environment": row.environment,
        "target": row.target,
        "outcome": row.outcome,
        "detail": row.detail,
        "data": row.data,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def append(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    app: str,
    environment: str | None,
    target: str,
    outcome: str,
    detail: str = "",
    data: dict[str, Any] | None = None,
) -> int:
    """Append one entry chained to the last one; returns its id. Never pass a secret value."""
    if outcome not in OUTCOMES:
        raise ValueError(f"invalid audit outcome {outcome!r}")
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at.isoformat()} given to the audit log; use UTC")
    serialize(session, _AUDIT_KEY)
    last = session.execute(
        select(AuditRow.hash).order_by(AuditRow.id.desc()).limit(1)
    ).scalar_one_or_none()
    row = AuditRow(
        at=at,
        actor=actor,
        action=action,
        app=app,
        environment=environment,
        target=target,
        outcome=outcome,
        detail=detail,
        data=dict(data or {}),
        prev_hash=last or GENESIS,
        hash="",
    )
    session.add(row)
    session.flush()  # the id is part of what the hash covers
    session.refresh(row)  # `at` as the database gives it back (UTC): the hash covers its text
    row.hash = entry_hash(row.prev_hash, _fields(row))
    return row.id


def record(store: Store, **entry: Any) -> int:
    """Append one entry in a transaction of its own."""
    with store.writing() as session:
        return append(session, **entry)


def entries(
    store: Store,
    app: str | None = None,
    environment: str | None = None,
    since: datetime | None = None,
    actor: str | None = None,
    limit: int | None = None,
    action: str | None = None,
) -> list[AuditRecord]:
    """Oldest first (the newest `limit` ones when a limit is given)."""
    query = matching(app, environment, since, actor, action).order_by(AuditRow.id.desc())
    if limit is not None:
        query = query.limit(limit)
    with store.reading() as session:
        rows = list(session.scalars(query))
        return [to_record(row) for row in reversed(rows)]


def matching(
    app: str | None = None,
    environment: str | None = None,
    since: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
) -> Select[AuditRow]:
    """The entries that match every filter given (a query to order and limit)."""
    query = select(AuditRow)
    if action is not None:
        query = query.where(AuditRow.action == action)
    if app is not None:
        query = query.where(AuditRow.app == app)
    if environment is not None:
        query = query.where(AuditRow.environment == environment)
    if since is not None:
        query = query.where(AuditRow.at >= since)
    if actor is not None:
        query = query.where(AuditRow.actor == actor)
    return query


def to_record(row: AuditRow) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        app=row.app,
        environment=row.environment,
        target=row.target,
        outcome=row.outcome,
        detail=row.detail,
        data=dict(row.data),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def check(store: Store) -> tuple[int, Break | None]:
    """Walk the whole chain (every app): (entries checked, the first break or None)."""
    with store.reading() as session:
        rows = session.scalars(
            select(AuditRow).order_by(AuditRow.id.asc()).execution_options(yield_per=500)
        )
        return verify(_fields(row) for row in rows)
