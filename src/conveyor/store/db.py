"""The state store: releases, deployments with their events, and running instances.

SQLAlchemy 2 over SQLite (the default, one file under the conveyor home) or PostgreSQL. The schema
is owned by Alembic and brought to "head" by `Store.open()`. Every public method is one short
transaction and returns frozen records, never ORM objects: the agent writes from one thread while
CLI processes read the same database concurrently.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    StatementError,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from conveyor.store.models import DeploymentRow, EventRow, InstanceRow, ReleaseRow

# stop: an environment taken down on request; start: brought back after one; crash_loop: the
# supervisor found an active color crash-looping (recorded, outcome failed: not a deployment).
KINDS = frozenset({"deploy", "rollback", "stop", "start", "crash_loop"})
OUTCOMES = frozenset({"in_progress", "succeeded", "failed", "rolled_back", "aborted"})
ROLES = frozenset({"starting", "active", "standby"})
# The event appended to a succeeded deployment that a later one rolled back.
ROLLED_BACK = "rolled_back"

ALEMBIC_DIR = Path(__file__).resolve().parent / "alembic"
# Serialises schema upgrades between processes on PostgreSQL (pg_advisory_xact_lock key).
_PG_MIGRATION_LOCK = 0x636F6E76  # "conv"
# How long SQLite waits for another process's write lock before failing, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 5000
# Execution option telling the SQLite "begin" hook which BEGIN to emit.
_BEGIN_OPTION = "conveyor_sqlite_begin"


class StoreError(Exception):
    """A user-facing state store error: one line that names the database and says what to do."""


class StoreLost(StoreError):
    """The SQLite file this store opened was deleted or replaced under it (another inode now,
    or none): what it reads and writes would no longer be the state it opened."""


class DuplicateRelease(StoreError):
    def __init__(self, app: str, version: str) -> None:
        super().__init__(f"release {version} of {app} already exists")
        self.app = app
        self.version = version


class UnknownDeployment(StoreError, LookupError):
    def __init__(self, deployment_id: int) -> None:
        super().__init__(f"no deployment with id {deployment_id}")
        self.deployment_id = deployment_id


@dataclass(frozen=True)
class ReleaseRecord:
    app: str
    version: str
    commit: str | None
    digest: str
    size: int  # bytes of the stored .tar.gz archive
    created_at: datetime


@dataclass(frozen=True)
class EventRecord:
    deployment_id: int
    at: datetime
    state: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentRecord:
    id: int
    app: str
    environment: str
    version: str
    kind: str
    outcome: str
    started_at: datetime
    finished_at: datetime | None
    reason: str
    previous_version: str | None


@dataclass(frozen=True)
class InstanceRecord:
    app: str
    environment: str
    service: str
    color: str
    version: str
    digest: str
    role: str
    runtime: str
    handle: dict[str, Any]  # the runtime's Handle as JSON: how to find the workload again
    started_at: datetime
    standby_until: datetime | None
    deployment_id: int | None


def database_url(home: Path, config_file: Path | None = None) -> str:
    """`$CONVEYOR_DATABASE_URL`, else `[state] url` of `config_file`, else `home/state.db`."""
    override = os.environ.get("CONVEYOR_DATABASE_URL")
    if override:
        return override
    configured = configured_url(config_file) if config_file is not None else None
    if configured:
        return configured
    return f"sqlite:///{home / 'state.db'}"


def configured_url(config_file: Path) -> str | None:
    """`[state] url` of conveyor.toml, read with tomllib alone: opening the store must not wait
    for the whole configuration (pydantic), nor fall back to another database when some other
    part of the file is broken. Loading the configuration validates the key."""
    import tomllib

    try:
        with open(config_file, "rb") as f:
            state = tomllib.load(f).get("state")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    url = state.get("url") if isinstance(state, dict) else None
    return url if isinstance(url, str) and url else None


def normalize_url(url: str) -> URL:
    """Parse `url`, pointing bare `postgresql://` (and `postgres://`) URLs at psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def redacted_url(url: str) -> str:
    """`url` with its password masked, safe for logs and error messages."""
    try:
        return normalize_url(url).render_as_string(hide_password=True)
    except Exception:
        # An unparsable URL may still contain a secret: show only its scheme.
        scheme = url.split(":", 1)[0] if ":" in url else "?"
        return f"{scheme}://<unparsable url>"


# What to do once the file was deleted or replaced under a running agent.
LOST_HINT = (
    "stop the agent (`conveyor agent stop --keep-running`), restore a backup if you have one "
    "(see `conveyor db --help`), start it again, then run `conveyor doctor`"
)


def _hint(backend: str) -> str:
    """What to do about a database that fails, by backend."""
    if backend == "sqlite":
        return (
            "check that the disk has room and the directory is writable, then retry; "
            "`conveyor doctor` says more"
        )
    return (
        "check that the PostgreSQL server runs and that the database exists "
        "(CONVEYOR_DATABASE_URL), then retry; `conveyor doctor` says more"
    )


def _sqlite_file(url: URL) -> Path | None:
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    return Path(database)


def _identity(path: Path) -> tuple[int, int] | None:
    """The file's device and inode: what stays the same while it is the same file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _refuse_orphaned_journal(path: Path, where: str) -> None:
    """A missing SQLite file beside its write-ahead log was deleted while a process (the agent)
    had it open: creating a new one here would mix that process's log into an empty database."""
    if path.exists():
        return
    for suffix in ("-wal", "-shm"):
        journal = path.with_name(path.name + suffix)
        if journal.exists():
            raise StoreError(
                f"the state database {where} is missing but its journal {journal.name} is still "
                "there (the file was deleted while open): restore a backup in its place (see "
                "`conveyor db --help`), or, with no agent running, remove "
                f"{path.name}-wal and {path.name}-shm to start on an empty database"
            )


def _check_choice(what: str, value: str, allowed: frozenset[str]) -> None:
    if value not in allowed:
        raise ValueError(f"invalid {what} {value!r} (expected one of {', '.join(sorted(allowed))})")


def _setup_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, foreign keys, and real transactions on SQLite.

    pysqlite's legacy transaction handling neither wraps DDL in transactions nor lets us choose
    BEGIN IMMEDIATE; we turn it off and emit BEGIN ourselves (the recipe from SQLAlchemy's
    SQLite dialect documentation). Writers use BEGIN IMMEDIATE so they queue on the busy
    timeout instead of failing when a concurrent reader's snapshot blocks the lock upgrade.
    """

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get(_BEGIN_OPTION, "BEGIN"))


def _make_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:"):
            # One shared connection, or each pooled connection would see its own empty database.
            engine = create_engine(
                url, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            # The pool hands a connection to one thread at a time, so sharing across threads is safe.
            engine = create_engine(url, connect_args={"check_same_thread": False})
        _setup_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


# In each migration script: `revision: str = "0002"`, `down_revision: str | None = "0001"`.
_REVISION = re.compile(r"^revision\b[^=\n]*=\s*[\"']([^\"']+)[\"']", re.M)
_DOWN_REVISION = re.compile(r"^down_revision\b[^=\n]*=\s*(?:[\"']([^\"']+)[\"']|(None))\s*$", re.M)


def schema_heads(versions: Path = ALEMBIC_DIR / "versions") -> frozenset[str] | None:
    """The head revisions, read from the migration scripts without importing Alembic.

    None when a script does not read plainly (a merge, a computed value): then Alembic decides.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        source = script.read_text(encoding="utf-8")
        revision = _REVISION.search(source)
        down = _DOWN_REVISION.search(source)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        if down.group(1):
            parents.add(down.group(1))
    heads = frozenset(revisions - parents)
    return heads or None


def schema_revisions(versions: Path = ALEMBIC_DIR / "versions") -> frozenset[str]:
    """Every revision this conveyor has a migration script for."""
    found = (_REVISION.search(p.read_text(encoding="utf-8")) for p in versions.glob("*.py"))
    return frozenset(m.group(1) for m in found if m is not None)


# conveyor_meta key: the conveyor version that last brought the schema up (a newer one than
# this conveyor knows says which version to install).
SCHEMA_WRITER = "schema_writer"


class NewerSchema(StoreError):
    """The database was upgraded by a newer conveyor: this one must not touch it."""


@dataclass(frozen=True)
class SchemaState:
    revisions: frozenset[str]  # empty: a new database
    writer: str | None  # the conveyor version that last upgraded it (None before 0003)


def schema_state(engine: Engine) -> SchemaState:
    """The stored schema revision and who wrote it: plain queries, no Alembic."""
    try:
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT version_num FROM conveyor_alembic_version")).all()
    except (OperationalError, ProgrammingError):  # no such table yet: a new database
        return SchemaState(frozenset(), None)
    writer = None
    try:
        with engine.connect() as conn:
            writer = conn.execute(
                text("SELECT value FROM conveyor_meta WHERE key = :key"), {"key": SCHEMA_WRITER}
            ).scalar_one_or_none()
    except (OperationalError, ProgrammingError):  # a schema from before 0003
        pass
    return SchemaState(frozenset(str(row[0]) for row in stored), writer)


def _check_known(state: SchemaState, where: str) -> None:
    unknown = sorted(state.revisions - schema_revisions())
    if unknown:
        from conveyor import __version__

        by = f"conveyor {state.writer}" if state.writer else "a newer conveyor"
        raise NewerSchema(
            f"the database {where} has schema revision {', '.join(unknown)}, written by {by}; "
            f"this conveyor {__version__} knows revisions up to "
            f"{', '.join(sorted(schema_heads() or ()))}: install {by} or newer "
            "(nothing was changed)"
        )


def _upgrade(engine: Engine, where: str = "") -> None:
    """Bring the schema to Alembic "head", one process at a time; refuse a newer schema.

    An up-to-date database (nearly always) is found so with a plain query: no Alembic import.
    """
    state = schema_state(engine)
    _check_known(state, where)
    if state.revisions and state.revisions == schema_heads():
        return
    # Alembic (and Mako under it) costs a good part of a second to import: only here.
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            # BEGIN IMMEDIATE takes the database write lock up front: a second process opening
            # the same file waits here, then finds the schema already at head.
            conn.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            from conveyor import __version__

            # Which conveyor wrote this schema: an older one that meets it says what to install.
            conn.execute(text("DELETE FROM conveyor_meta WHERE key = :key"), {"key": SCHEMA_WRITER})
            conn.execute(
                text("INSERT INTO conveyor_meta (key, value) VALUES (:key, :value)"),
                {"key": SCHEMA_WRITER, "value": __version__},
            )


def serialize(session: Session, key: int) -> None:
    """Make the rest of this write transaction exclusive among those that serialize on `key`.

    SQLite needs nothing: a write transaction there holds the whole database (BEGIN IMMEDIATE).
    PostgreSQL takes a transaction-scoped advisory lock, released at commit or rollback.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _release(row: ReleaseRow) -> ReleaseRecord:
    return ReleaseRecord(
        app=row.app,
        version=row.version,
        commit=row.commit,
        digest=row.digest,
        size=row.size,
        created_at=row.created_at,
    )


def _deployment(row: DeploymentRow) -> DeploymentRecord:
    return DeploymentRecord(
        id=row.id,
        app=row.app,
        environment=row.environment,
        version=row.version,
        kind=row.kind,
        outcome=row.outcome,
        started_at=row.started_at,
        finished_at=row.finished_at,
        reason=row.reason,
        previous_version=row.previous_version,
    )


def _marked(session: Session, rows: list[DeploymentRow]) -> list[DeploymentRecord]:
    """Records of these deployments, showing as rolled back those a later one rolled back."""
    records = [_deployment(row) for row in rows]
    if not records:
        return records
    marks = {
        deployment_id: reason
        for deployment_id, reason in session.execute(
            select(EventRow.deployment_id, EventRow.reason)
            .where(
                EventRow.deployment_id.in_([r.id for r in records]),
                EventRow.state == ROLLED_BACK,
            )
            .order_by(EventRow.id.asc())
        )
    }
    return [
        replace(r, outcome="rolled_back", reason=marks[r.id])
        if r.id in marks and r.outcome == "succeeded"
        else r
        for r in records
    ]


def _event(row: EventRow) -> EventRecord:
    return EventRecord(
        deployment_id=row.deployment_id,
        at=row.at,
        state=row.state,
        reason=row.reason,
        data=dict(row.data),
    )


def _instance(row: InstanceRow) -> InstanceRecord:
    return InstanceRecord(
        app=row.app,
        environment=row.environment,
        service=row.service,
        color=row.color,
        version=row.version,
        digest=row.digest,
        role=row.role,
        runtime=row.runtime,
        handle=dict(row.handle),
        started_at=row.started_at,
        standby_until=row.standby_until,
        deployment_id=row.deployment_id,
    )


class Store:
    def __init__(self, engine: Engine, where: str = "") -> None:
        """Use `Store.open(url)`; this does not create or upgrade the schema."""
        self._engine = engine
        self.where = where or redacted_url(engine.url.render_as_string(hide_password=False))
        # SQLite: the file and the identity it had when opened; see lost().
        self.file = _sqlite_file(engine.url)
        self._identity = _identity(self.file) if self.file is not None else None
        self._lost: str | None = None
        # Same pool, but transactions started through it take SQLite's write lock immediately.
        self._writer = engine.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect to `url` and create or upgrade the schema (idempotent)."""
        where = redacted_url(url)
        try:
            parsed = normalize_url(url)
        except ArgumentError as exc:
            raise StoreError(f"invalid database URL {where}: {exc}") from exc
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise StoreError(
                f"unsupported database {where}: use sqlite:///path or postgresql://user@host/db"
            )
        hint = _hint(parsed.get_backend_name())
        sqlite_file = _sqlite_file(parsed)
        if sqlite_file is not None:
            _refuse_orphaned_journal(sqlite_file, where)
        try:
            engine = _make_engine(parsed)
        except ModuleNotFoundError as exc:
            raise StoreError(
                f"cannot open {where}: the PostgreSQL driver is missing ({exc}); "
                "install conveyor-deploy[postgres]"
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot open the database {where}: {exc}; {hint}") from exc
        try:
            _upgrade(engine, where)
        except DBAPIError as exc:
            engine.dispose()
            # exc.orig is the driver's message, without SQLAlchemy's SQL echo; URLs in messages
            # are always the redacted form.
            raise StoreError(f"cannot open the database {where}: {exc.orig}; {hint}") from exc
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, where)

    @property
    def dialect(self) -> str:
        """The SQLAlchemy dialect name: sqlite or postgresql."""
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()
        self.lost()
        if self._lost == "deleted" and self.file is not None and not self.file.exists():
            # The journal of the deleted file, left by our connections: no use to anyone, and
            # beside a missing file it stops the next Store.open (see _refuse_orphaned_journal).
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    self.file.with_name(self.file.name + suffix).unlink()

    def backup(self, target: Path) -> int:
        """A consistent copy of the whole database at `target`, taken while others write
        (store/backup.py: SQLite's online backup, pg_dump); returns its size in bytes."""
        from conveyor.store import backup

        self._check()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.dialect == "sqlite":
                backup.backup_sqlite(self._engine, target)
            else:
                backup.backup_postgres(self._engine.url, target)
            return target.stat().st_size
        except (backup.BackupError, OSError) as exc:
            raise StoreError(f"cannot back up {self.where} to {target}: {exc}") from exc

    def lost(self) -> str | None:
        """Why this store no longer holds the state it opened, or None: its SQLite file was
        deleted or replaced (another device or inode). Once lost, it stays lost. One stat()."""
        if self._lost is None and self.file is not None:
            now = _identity(self.file)
            if now is None:
                self._lost = "deleted"
            elif self._identity is not None and now != self._identity:
                self._lost = "replaced"
        if self._lost is None:
            return None
        return f"the state database {self.where} was {self._lost} while it was open"

    def _check(self) -> None:
        problem = self.lost()
        if problem is not None:
            raise StoreLost(f"{problem}; {LOST_HINT}")

    @contextmanager
    def _failures(self) -> Iterator[None]:
        """The driver's failures as one StoreError line that names the database and what to do."""
        try:
            yield
        except IntegrityError:
            raise  # a constraint the caller handles (a duplicate release)
        except DBAPIError as exc:
            # A file deleted under us shows as "disk I/O error": say what happened instead.
            self._check()
            hint = _hint(self.dialect)
            raise StoreError(f"the state database {self.where} failed: {exc.orig}; {hint}") from exc

    @contextmanager
    def _read(self) -> Iterator[Session]:
        self._check()
        with (
            self._failures(),
            Session(self._engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        self._check()
        try:
            with (
                self._failures(),
                Session(self._writer, expire_on_commit=False) as session,
                session.begin(),
            ):
                yield session
        except StatementError as exc:
            # A value our column types refused (a naive datetime): report the caller's mistake
            # as the plain ValueError it is, not as a database error.
            if isinstance(exc.orig, ValueError) and not isinstance(exc, DBAPIError):
                raise exc.orig from None
            raise

    # for the store's companion modules (store/locks.py, store/audit.py): a lock and the audit
    # entry that records it are written in one transaction, or not at all

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so writers queue instead of failing)."""
        with self._write() as session:
            yield session

    # releases

    def add_release(self, rec: ReleaseRecord) -> None:
        row = ReleaseRow(
            app=rec.app,
            version=rec.version,
            commit=rec.commit,
            digest=rec.digest,
            size=rec.size,
            created_at=rec.created_at,
        )
        try:
            with self._write() as session:
                session.add(row)
        except IntegrityError as exc:
            raise DuplicateRelease(rec.app, rec.version) from exc

    def get_release(self, app: str, version: str) -> ReleaseRecord | None:
        with self._read() as session:
            row = session.scalars(
                select(ReleaseRow).where(ReleaseRow.app == app, ReleaseRow.version == version)
            ).one_or_none()
            return _release(row) if row is not None else None

    def list_releases(self, app: str) -> list[ReleaseRecord]:
        """Newest first."""
        with self._read() as session:
            rows = session.scalars(
                select(ReleaseRow)
                .where(ReleaseRow.app == app)
                .order_by(ReleaseRow.created_at.desc(), ReleaseRow.id.desc())
            )
            return [_release(row) for row in rows]

    # deployments

    def create_deployment(
        self,
        app: str,
        environment: str,
        version: str,
        kind: str,
        previous_version: str | None,
        at: datetime,
        reason: str = "",
    ) -> int:
        _check_choice("deployment kind", kind, KINDS)
        row = DeploymentRow(
            app=app,
            environment=environment,
            version=version,
            kind=kind,
            outcome="in_progress",
            started_at=at,
            finished_at=None,
            reason=reason,
            previous_version=previous_version,
        )
        with self._write() as session:
            session.add(row)
            session.flush()
            return row.id

    def add_event(
        self, deployment_id: int, state: str, reason: str, data: dict[str, Any], at: datetime
    ) -> None:
        with self._write() as session:
            if session.get(DeploymentRow, deployment_id) is None:
                raise UnknownDeployment(deployment_id)
            session.add(
                EventRow(deployment_id=deployment_id, at=at, state=state, reason=reason, data=data)
            )

    def finish_deployment(
        self, deployment_id: int, outcome: str, reason: str, at: datetime
    ) -> bool:
        """Give an unfinished deployment its outcome; False (and no change) if it had one.

        A finished deployment is never rewritten: that it was rolled back later is an event
        (`ROLLED_BACK`) appended to it, which `get_deployment` and `list_deployments` show.
        """
        _check_choice("outcome", outcome, OUTCOMES - {"in_progress"})
        with self._write() as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is None:
                raise UnknownDeployment(deployment_id)
            if row.outcome != "in_progress":
                return False
            row.outcome = outcome
            row.reason = reason
            row.finished_at = at
            return True

    def get_deployment(self, deployment_id: int) -> DeploymentRecord | None:
        with self._read() as session:
            row = session.get(DeploymentRow, deployment_id)
            return _marked(session, [row])[0] if row is not None else None

    def list_deployments(
        self, app: str, environment: str, limit: int = 50
    ) -> list[DeploymentRecord]:
        """Newest first (by id: ids grow with creation, timestamps may tie)."""
        with self._read() as session:
            rows = session.scalars(
                select(DeploymentRow)
                .where(DeploymentRow.app == app, DeploymentRow.environment == environment)
                .order_by(DeploymentRow.id.desc())
                .limit(limit)
            )
            return _marked(session, list(rows))

    def events(self, deployment_id: int) -> list[EventRecord]:
        """Oldest first."""
        with self._read() as session:
            rows = session.scalars(
                select(EventRow)
                .where(EventRow.deployment_id == deployment_id)
                .order_by(EventRow.id.asc())
            )
            return [_event(row) for row in rows]

    def in_progress(self, app: str, environment: str) -> DeploymentRecord | None:
        """The newest unfinished deployment of app+environment, if any."""
        with self._read() as session:
            row = session.scalars(
                select(DeploymentRow)
                .where(
                    DeploymentRow.app == app,
                    DeploymentRow.environment == environment,
                    DeploymentRow.outcome == "in_progress",
                )
                .order_by(DeploymentRow.id.desc())
                .limit(1)
            ).one_or_none()
            return _deployment(row) if row is not None else None

    # instances

    def upsert_instance(self, rec: InstanceRecord) -> None:
        """Insert or replace the instance keyed by (app, environment, service, color)."""
        _check_choice("instance role", rec.role, ROLES)
        with self._write() as session:
            key = (rec.app, rec.environment, rec.service, rec.color)
            row = session.get(InstanceRow, key)
            if row is None:
                row = InstanceRow(
                    app=rec.app, environment=rec.environment, service=rec.service, color=rec.color
                )
                session.add(row)
            row.version = rec.version
            row.digest = rec.digest
            row.role = rec.role
            row.runtime = rec.runtime
            row.handle = dict(rec.handle)
            row.started_at = rec.started_at
            row.standby_until = rec.standby_until
            row.deployment_id = rec.deployment_id

    def delete_instance(self, app: str, environment: str, service: str, color: str) -> None:
        """Forget an instance; forgetting one that is not recorded is not an error."""
        with self._write() as session:
            session.execute(
                delete(InstanceRow).where(
                    InstanceRow.app == app,
                    InstanceRow.environment == environment,
                    InstanceRow.service == service,
                    InstanceRow.color == color,
                )
            )

    def instances(self, app: str, environment: str | None = None) -> list[InstanceRecord]:
        """Ordered by environment, service, color."""
        with self._read() as session:
            query = select(InstanceRow).where(InstanceRow.app == app)
            if environment is not None:
                query = query.where(InstanceRow.environment == environment)
            rows = session.scalars(
                query.order_by(InstanceRow.environment, InstanceRow.service, InstanceRow.color)
            )
            return [_instance(row) for row in rows]
