"""One operation at a time per environment: a deployment, a rollback, a redeploy, a stop.

The lock is a row in the state database (conveyor.store.locks), so it holds across agents and
hosts that share one PostgreSQL database, and against a lock taken by hand (`conveyor lock`).
A second operation is refused at once, never queued here: the caller is told who holds the
environment, since when and why (`conveyor deploy --wait` waits on the CLI's side).

While an operation runs, its agent renews the lock's lease every `lease / 3`. An agent that dies
stops renewing; once the lease is past, the next operation takes the lock over, and the audit log
records that. A restarted agent frees at once the locks its dead predecessor held on this host.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from conveyor import identity
from conveyor.engine.errors import Refused
from conveyor.procs import read_proc_stat
from conveyor.store import audit
from conveyor.store import locks as stored
from conveyor.store.db import Store
from conveyor.store.locks import LockHeld, LockRecord

log = logging.getLogger("conveyor.engine")

LEASE = 30.0  # seconds a holder may go silent before its lock can be taken over


class Locked(Refused):
    """The environment is held by someone else; `details` carries the lock (JSON)."""

    def __init__(self, message: str, lock: LockRecord) -> None:
        super().__init__(message)
        self.lock = lock
        self.details: dict[str, Any] = {"lock": lock.to_json()}


def held_message(lock: LockRecord, now: datetime) -> str:
    """Who holds the environment, since when, why, and what to do about it."""
    since = lock.acquired_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    ago = _ago((now - lock.acquired_at).total_seconds())
    env = lock.environment
    if lock.kind == stored.MANUAL:
        return (
            f"{env} is locked by {lock.holder} since {since} ({ago} ago): {lock.what}; "
            f"`conveyor unlock --env {env}` releases it, `--wait 5m` waits for it"
        )
    return (
        f"a deployment to {env} is already in progress ({lock.what}) — held by {lock.holder} "
        f"on {lock.host} (pid {lock.pid}) since {since} ({ago} ago); wait for it to finish, "
        f"follow it with `conveyor status --env {env}`, or deploy with `--wait 5m`"
    )


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def process_owner() -> tuple[str, int, str]:
    """(host, pid, owner token) of this process: the token tells its locks from any other's,
    even a later process that reuses the pid."""
    host = socket.gethostname()
    pid = os.getpid()
    return host, pid, f"{host}:{pid}:{secrets.token_hex(4)}"


class Locks:
    def __init__(
        self,
        store: Store,
        app: Callable[[], str],
        utcnow: Callable[[], datetime],
        lease: float = LEASE,
    ) -> None:
        self._store = store
        self._app = app
        self._utcnow = utcnow
        self._lease = timedelta(seconds=lease)
        self.host, self.pid, self.owner = process_owner()
        self._held: dict[str, str] = {}  # environment -> what this agent does there
        self._renewers: dict[str, asyncio.Task[None]] = {}

    @contextmanager
    def hold(self, env: str, what: str) -> Iterator[None]:
        if env in self._held:
            raise Refused(
                f"a deployment to {env} is already in progress ({self._held[env]}); "
                f"wait for it to finish or check `conveyor status --env {env}`"
            )
        app = self._app()
        self.acquire(app, env, what)
        self._held[env] = what
        self._start_renewing(app, env)
        try:
            yield
        finally:
            self._held.pop(env, None)
            renewer = self._renewers.pop(env, None)
            if renewer is not None:
                renewer.cancel()
            with self._store.writing() as session:
                if not stored.release(session, app, env, self.owner):
                    log.warning("the lock of %s was no longer ours when %s ended", env, what)

    def acquire(self, app: str, env: str, what: str) -> None:
        """Take the database lock for this agent (Locked when someone else holds it)."""
        now = self._utcnow()
        want = LockRecord(
            app=app,
            environment=env,
            kind=stored.OPERATION,
            what=what,
            holder=identity.actor(),
            owner=self.owner,
            host=self.host,
            pid=self.pid,
            acquired_at=now,
            expires_at=now + self._lease,
        )
        try:
            with self._store.writing() as session:
                gone = stored.acquire(session, want, now)
                if gone is not None:
                    record_takeover(session, gone, want, now)
        except LockHeld as exc:
            raise Locked(held_message(exc.lock, now), exc.lock) from None
        if gone is not None:
            log.warning("took over the lock of %s: %s", env, takeover_text(gone))

    def renew(self, app: str, env: str) -> bool:
        """Push the lease of our lock on `env` forward; False when it is not ours any more."""
        with self._store.writing() as session:
            return stored.renew(session, app, env, self.owner, self._utcnow() + self._lease)

    def _start_renewing(self, app: str, env: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # held outside the agent's loop (a test): nothing to renew from
            return
        self._renewers[env] = loop.create_task(self._keep_renewing(app, env))

    async def _keep_renewing(self, app: str, env: str) -> None:
        every = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            try:
                if not self.renew(app, env):
                    # Broken with `unlock --force`, or taken over after we went silent too
                    # long: the operation goes on, but no longer excludes others.
                    log.warning("lost the lock of %s (%s)", env, self._held.get(env))
                    return
            except Exception:  # a database hiccup: the next renewal may succeed
                log.exception("renewing the lock of %s failed", env)

    def free_stale(self, app: str) -> list[str]:
        """Remove the operation locks of dead processes on this host (an earlier agent that
        crashed); returns notes. Locks of other hosts wait for their lease to run out."""
        notes = []
        now = self._utcnow()
        with self._store.writing() as session:
            for lock in stored.all_locks(session, app):
                if lock.kind != stored.OPERATION or lock.host != self.host:
                    continue
                if lock.owner == self.owner or _alive(lock.pid):
                    continue
                stored.remove(session, app, lock.environment)
                detail = (
                    f"freed the lock of {lock.environment} ({lock.what}, by {lock.holder}): "
                    f"its agent (pid {lock.pid}) is gone"
                )
                audit.append(
                    session,
                    at=now,
                    actor=identity.AGENT,
                    action="lock.freed",
                    app=app,
                    environment=lock.environment,
                    target=lock.what,
                    outcome="ok",
                    detail=detail,
                    data={"lock": lock.to_json()},
                )
                notes.append(detail)
        return notes

    def holder(self, env: str) -> str | None:
        """What this agent is doing in `env` now, or None (other holders: `stored.get`)."""
        return self._held.get(env)


def _alive(pid: int) -> bool:
    """Whether the lock's agent still runs. A zombie does not: an agent killed with -9 stays one
    until it is reaped, and its successor, started at once, must free its locks all the same.
    (A pid reused by a stranger reads as alive: the lease ends that lock, a little later.)"""
    stat = read_proc_stat(pid)
    return stat is not None and stat.state != "Z"


def takeover_text(gone: LockRecord) -> str:
    assert gone.expires_at is not None
    return (
        f"{gone.what} by {gone.holder} on {gone.host} (pid {gone.pid}) stopped renewing its "
        f"lease, which ran out at {gone.expires_at.strftime('%H:%M:%S UTC')}"
    )


def record_takeover(session: Session, gone: LockRecord, new: LockRecord, now: datetime) -> None:
    audit.append(
        session,
        at=now,
        actor=new.holder,
        action="lock.takeover",
        app=new.app,
        environment=new.environment,
        target=new.what,
        outcome="ok",
        detail=f"took over the lock: {takeover_text(gone)}",
        data={"previous": gone.to_json()},
    )
