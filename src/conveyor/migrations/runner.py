"""Applying and undoing migrations on the app's PostgreSQL database (psycopg 3).

Applied versions live in the app database itself, in goose's own table, `goose_db_version`
(id, version_id, is_applied, tstamp), written as goose v3 writes it: a team coming from goose
keeps its history, and can still run goose against the same database. The migration lock is a
session advisory lock on goose's own key, so goose and conveyor exclude each other too.

Each migration runs in its own transaction together with its row in goose_db_version: when a
statement fails, the database is as it was before that migration, and MigrationFailed names
the file, the line of the failing statement and PostgreSQL's message. A `NO TRANSACTION`
migration runs statement by statement (CREATE INDEX CONCURRENTLY cannot run in a transaction);
a failure there leaves the statements before it applied, and the error says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor.core.migrations import Migration, Statement, position_line

if TYPE_CHECKING:
    import psycopg

TABLE = "goose_db_version"
# goose's DefaultLockID (lock/postgres.go): the same key, so goose and conveyor never migrate
# one database at once either.
LOCK_ID = 5887940537704921958
_LOCK_POLL = 0.25  # seconds between two tries of the lock
_LOCK_REPORT = 5.0  # seconds between two "still waiting" messages

Progress = Callable[[str], None]


class MigrationError(Exception):
    """Migrating failed; the message says where and why (never the database password)."""


class DatabaseUnavailable(MigrationError):
    pass


class LockTimeout(MigrationError):
    pass


class MigrationFailed(MigrationError):
    def __init__(
        self,
        migration: Migration,
        line: int,
        message: str,
        detail: str | None = None,
        hint: str | None = None,
        sqlstate: str | None = None,
        partial: bool = False,
        direction: str = "up",
    ) -> None:
        text = f"{migration.path}:{line}: {message}"
        if detail:
            text += f"\n  DETAIL: {detail}"
        if hint:
            text += f"\n  HINT: {hint}"
        if partial:
            text += (
                "\n  this migration runs without a transaction (NO TRANSACTION): the statements "
                f"before line {line} stayed applied, and version {migration.version} is not "
                "recorded"
            )
        elif direction == "up":
            text += f"\n  nothing of version {migration.version} was applied (rolled back)"
        else:
            text += f"\n  nothing of version {migration.version}'s Down ran (rolled back)"
        super().__init__(text)
        self.migration = migration
        self.line = line
        self.message = message
        self.detail = detail
        self.hint = hint
        self.sqlstate = sqlstate
        self.partial = partial
        # The migrations of the same run applied before this one (they stay applied).
        self.applied: list[Applied] = []


@dataclass(frozen=True)
class Applied:
    version: int
    name: str
    kind: str  # expand | contract
    direction: str  # up | down
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "kind": self.kind,
            "direction": self.direction,
            "seconds": round(self.seconds, 3),
        }


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise MigrationError(
            "migrations need psycopg: install conveyor with the postgres extra "
            "(pip install 'conveyor[postgres]')"
        ) from None
    return psycopg


def connect(url: str, where: str, purpose: str = "conveyor migrate") -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are opened per migration). `where` is the URL
    with its password masked: the only form of it that may appear in a message."""
    pg = _psycopg()
    try:
        conn: psycopg.Connection[Any] = pg.connect(
            url, autocommit=True, connect_timeout=10, application_name=purpose[:63]
        )
    except pg.Error as exc:
        # psycopg's message quotes neither the URL nor the password, but may be long.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"cannot connect to {where}: {first}") from None
    except Exception as exc:  # a malformed URL: never echo it
        raise DatabaseUnavailable(f"cannot connect to {where}: {type(exc).__name__}") from None
    return conn


def _table_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
    return bool(row and row[0])


def ensure_table(conn: psycopg.Connection[Any]) -> None:
    """goose's table, created as goose v3 creates it (with its version 0 row)."""
    if _table_exists(conn):
        return
    with conn.transaction():
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            "id integer PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, "
            "version_id bigint NOT NULL, is_applied boolean NOT NULL, "
            "tstamp timestamp NOT NULL DEFAULT now())"
        )
        conn.execute(f"INSERT INTO {TABLE} (version_id, is_applied) VALUES (0, true)")


def applied_versions(conn: psycopg.Connection[Any]) -> dict[int, datetime]:
    """Applied version -> when (the database's local time, as goose writes it).

    Read as goose reads a history: the newest row of each version decides (goose before v3
    wrote is_applied = false rows for a down; v3 deletes the rows).
    """
    if not _table_exists(conn):
        return {}
    state: dict[int, tuple[bool, datetime]] = {}
    for version, is_applied, tstamp in conn.execute(
        f"SELECT version_id, is_applied, tstamp FROM {TABLE} ORDER BY id"
    ):
        state[int(version)] = (bool(is_applied), tstamp)
    return {v: at for v, (on, at) in state.items() if on and v != 0}


def _holder(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
        "AND l.objsubid = 1 AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (LOCK_ID >> 32, LOCK_ID & 0xFFFFFFFF),
    ).fetchone()
    if row is None:
        return "another session"
    pid, name, since = row
    who = f"'{name}'" if name else "a session"
    return f"{who} (pid {pid}, connected {since:%Y-%m-%d %H:%M:%S})"


@contextmanager
def migration_lock(
    conn: psycopg.Connection[Any],
    where: str,
    wait: float,
    progress: Progress,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """Hold the database's migration lock (a session advisory lock) for the block.

    Tries every quarter second, says who holds it every 5 s, and gives up after `wait`
    seconds with LockTimeout. The lock goes with the session: a killed process frees it.
    """
    deadline = clock() + wait
    next_report = clock()
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_ID,)).fetchone()
        if row and row[0]:
            break
        now = clock()
        if now >= deadline:
            raise LockTimeout(
                f"gave up after {wait:g}s waiting for the migration lock on {where}, held by "
                f"{_holder(conn)}: another deploy or `conveyor migrate` (or goose) is migrating "
                "this database; try again once it is done"
            )
        if now >= next_report:
            progress(
                f"waiting for the migration lock on {where}, held by {_holder(conn)} "
                f"(giving up in {deadline - now:.0f}s)"
            )
            next_report = now + _LOCK_REPORT
        time.sleep(min(_LOCK_POLL, max(0.0, deadline - now)))
    try:
        yield
    finally:
        with suppress(Exception):
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))


def _failed(
    exc: Exception, migration: Migration, statement: Statement, partial: bool, direction: str
) -> MigrationFailed:
    diag = getattr(exc, "diag", None)
    message = (getattr(diag, "message_primary", None) or str(exc)).strip()
    position = getattr(diag, "statement_position", None)
    try:
        line = position_line(statement, int(position) if position else None)
    except ValueError:
        line = statement.line
    return MigrationFailed(
        migration,
        line,
        message,
        detail=getattr(diag, "message_detail", None),
        hint=getattr(diag, "message_hint", None),
        sqlstate=getattr(diag, "sqlstate", None),
        partial=partial,
        direction=direction,
    )


def run(conn: psycopg.Connection[Any], migration: Migration, direction: str = "up") -> float:
    """Run one migration's Up (or Down) and record it in goose_db_version; the seconds it took.

    The caller holds the migration lock. Raises MigrationFailed.
    """
    psycopg = _psycopg()
    statements = migration.up if direction == "up" else (migration.down or ())
    record: tuple[str, tuple[int, ...]] = (
        (f"INSERT INTO {TABLE} (version_id, is_applied) VALUES (%s, true)", (migration.version,))
        if direction == "up"
        else (f"DELETE FROM {TABLE} WHERE version_id = %s", (migration.version,))
    )
    started = time.monotonic()
    if migration.transaction:
        current = statements[0] if statements else Statement("", 1)
        try:
            with conn.transaction():
                for current in statements:
                    conn.execute(current.sql.encode(), prepare=False)
                conn.execute(record[0], record[1])
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and conn.closed:
                raise DatabaseUnavailable(
                    f"lost the connection while running {migration.path}: {exc}"
                ) from None
            raise _failed(exc, migration, current, False, direction) from None
    else:
        for index, statement in enumerate(statements):
            try:
                conn.execute(statement.sql.encode(), prepare=False)
            except psycopg.Error as exc:
                raise _failed(exc, migration, statement, index > 0, direction) from None
        conn.execute(record[0], record[1])
    return time.monotonic() - started
