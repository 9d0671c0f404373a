"""An environment's lock taken and released by hand: what `conveyor lock|unlock` and the API's
`PATCH /environments/{env}` both do. Each change is written with its audit entry in one
transaction; a refusal is audited too. See docs/locks-and-audit.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from conveyor.engine.locks import held_message, process_owner
from conveyor.store import audit
from conveyor.store import locks as stored
from conveyor.store.db import Store
from conveyor.store.locks import LockHeld, LockRecord


class LockRefused(Exception):
    """Not locked or not unlocked; the message says why and what would do it."""

    def __init__(self, message: str, lock: LockRecord | None = None) -> None:
        super().__init__(message)
        self.lock = lock


def _now() -> datetime:
    return datetime.now(UTC)


def entry(
    who: str,
    app: str,
    env: str,
    action: str,
    outcome: str,
    detail: str,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An audit entry about the lock of `env`."""
    return {
        "at": _now(),
        "actor": who,
        "action": action,
        "app": app,
        "environment": env,
        "target": env,
        "outcome": outcome,
        "detail": detail,
        "data": data or {},
    }


def lock(
    store: Store, app: str, env: str, who: str, reason: str, facts: dict[str, Any] | None = None
) -> LockRecord:
    """Lock `env` for `who`; LockRefused when someone else holds it. `facts` join the audit
    entry (the API's token, role and source)."""
    host, pid, owner = process_owner()
    now = _now()
    want = LockRecord(
        app=app,
        environment=env,
        kind=stored.MANUAL,
        what=reason.strip(),
        holder=who,
        owner=owner,
        host=host,
        pid=pid,
        acquired_at=now,
        expires_at=None,
    )
    extra = dict(facts or {})
    try:
        with store.writing() as session:
            gone = stored.acquire(session, want, now)
            data = {**extra, **({"took_over": gone.to_json()} if gone else {})}
            audit.append(session, **entry(who, app, env, "lock", "ok", reason.strip(), data))
    except LockHeld as exc:
        detail = f"held by {exc.lock.holder}: {exc.lock.what}"
        audit.record(store, **entry(who, app, env, "lock", "refused", detail, extra))
        raise LockRefused(held_message(exc.lock, now), exc.lock) from None
    return want


def current(store: Store, app: str, env: str) -> LockRecord | None:
    with store.reading() as session:
        return stored.get(session, app, env)


def is_live(found: LockRecord) -> bool:
    """Held by an operation in progress (a deploy's lock whose lease runs)."""
    return found.kind == stored.OPERATION and not found.expired(_now())


def unlock(
    store: Store,
    app: str,
    env: str,
    who: str,
    force: bool,
    facts: dict[str, Any] | None = None,
) -> LockRecord | None:
    """Release `env`'s lock: the lock released, or None when it was not locked. A lock held by
    a running operation needs `force` (LockRefused otherwise, audited)."""
    extra = dict(facts or {})
    found = current(store, app, env)
    if found is None:
        return None
    live = is_live(found)
    if live and not force:
        detail = f"held by a running operation ({found.what}); --force not given"
        audit.record(store, **entry(who, app, env, "unlock", "refused", detail, extra))
        raise LockRefused(
            f"{env} is held by a running {found.what} (by {found.holder} on {found.host}, pid "
            f"{found.pid}); it is released when that ends. `conveyor unlock --env {env} --force` "
            "breaks it",
            found,
        )
    with store.writing() as session:
        gone = stored.remove(session, app, env)
        if gone is None:  # released meanwhile
            return None
        action = "unlock.force" if live else "unlock"
        detail = f"released {gone.kind} lock of {gone.holder}: {gone.what}"
        data = {**extra, "lock": gone.to_json()}
        audit.append(session, **entry(who, app, env, action, "ok", detail, data))
    return gone
