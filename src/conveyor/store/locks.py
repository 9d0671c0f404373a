"""Environment locks in the state database: one holder per app and environment.

A row in `environment_locks` is the lock. A deployment's lock ("operation") carries a lease that
its agent renews; once the lease is past, the holder is presumed gone (its agent died, on this
host or another) and the next one to ask takes the lock over. A lock taken by hand ("manual")
has no lease: it holds until someone unlocks it.

Every function works inside the caller's write transaction (`Store.writing()`), so that the
caller can append the matching audit entry in the same transaction. Lock changes serialize on
one key (`serialize`): two processes asking at the same moment see each other's row, on SQLite
and on PostgreSQL alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from conveyor.store.db import StoreError, serialize
from conveyor.store.models import EnvironmentLockRow

OPERATION = "operation"  # held by an agent for a deploy, rollback, stop
MANUAL = "manual"  # taken by `conveyor lock`
# pg_advisory_xact_lock key of lock changes ("lock").
_LOCKS_KEY = 0x6C6F636B


@dataclass(frozen=True)
class LockRecord:
    app: str
    environment: str
    kind: str
    what: str
    holder: str
    owner: str
    host: str
    pid: int
    acquired_at: datetime
    expires_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["acquired_at"] = self.acquired_at.isoformat()
        data["expires_at"] = self.expires_at.isoformat() if self.expires_at else None
        return data


class LockHeld(StoreError):
    def __init__(self, lock: LockRecord) -> None:
        super().__init__(f"{lock.environment} is locked by {lock.holder}: {lock.what}")
        self.lock = lock


def _record(row: EnvironmentLockRow) -> LockRecord:
    return LockRecord(
        app=row.app,
        environment=row.environment,
        kind=row.kind,
        what=row.what,
        holder=row.holder,
        owner=row.owner,
        host=row.host,
        pid=row.pid,
        acquired_at=row.acquired_at,
        expires_at=row.expires_at,
    )


def acquire(session: Session, want: LockRecord, now: datetime) -> LockRecord | None:
    """Take the lock `want` describes. Returns the expired lock it took over, if there was one;
    raises LockHeld when a live lock is in the way (whoever holds it, this owner included)."""
    if want.kind not in (OPERATION, MANUAL):
        raise ValueError(f"invalid lock kind {want.kind!r}")
    serialize(session, _LOCKS_KEY)
    row = session.get(EnvironmentLockRow, (want.app, want.environment))
    taken_over = None
    if row is not None:
        current = _record(row)
        if not current.expired(now):
            raise LockHeld(current)
        taken_over = current
        session.delete(row)
        session.flush()
    session.add(EnvironmentLockRow(**asdict(want)))
    session.flush()
    return taken_over


def renew(session: Session, app: str, environment: str, owner: str, until: datetime) -> bool:
    """Extend `owner`'s lease to `until`; False when the lock is no longer theirs."""
    serialize(session, _LOCKS_KEY)
    result = session.execute(
        update(EnvironmentLockRow)
        .where(
            EnvironmentLockRow.app == app,
            EnvironmentLockRow.environment == environment,
            EnvironmentLockRow.owner == owner,
        )
        .values(expires_at=until)
    )
    return bool(getattr(result, "rowcount", 0))


def release(session: Session, app: str, environment: str, owner: str) -> bool:
    """Give up `owner`'s lock; False when it was not theirs any more (broken or taken over)."""
    serialize(session, _LOCKS_KEY)
    result = session.execute(
        delete(EnvironmentLockRow).where(
            EnvironmentLockRow.app == app,
            EnvironmentLockRow.environment == environment,
            EnvironmentLockRow.owner == owner,
        )
    )
    return bool(getattr(result, "rowcount", 0))


def remove(session: Session, app: str, environment: str) -> LockRecord | None:
    """Remove whatever lock `environment` has (unlock, or break one); returns it."""
    serialize(session, _LOCKS_KEY)
    row = session.get(EnvironmentLockRow, (app, environment))
    if row is None:
        return None
    gone = _record(row)
    session.delete(row)
    return gone


def get(session: Session, app: str, environment: str) -> LockRecord | None:
    row = session.get(EnvironmentLockRow, (app, environment))
    return _record(row) if row is not None else None


def all_locks(session: Session, app: str | None = None) -> list[LockRecord]:
    """Ordered by app and environment."""
    query = select(EnvironmentLockRow)
    if app is not None:
        query = query.where(EnvironmentLockRow.app == app)
    rows = session.scalars(query.order_by(EnvironmentLockRow.app, EnvironmentLockRow.environment))
    return [_record(row) for row in rows]
