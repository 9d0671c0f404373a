"""Consistent copies of the state store, taken while the agent runs and writes.

SQLite: the online backup API (`sqlite3.Connection.backup`) copies the database page by page
from one read snapshot, so a copy never holds half a transaction; the copy is written beside
the target and renamed into place. PostgreSQL: `pg_dump` (plain SQL, one snapshot), with the
password in its environment (PGPASSWORD), never on its command line.

Restore (docs/operations.md): with the agent stopped (`conveyor agent stop --keep-running`), put
the copy in place of `state.db` (SQLite), or load it with `psql` into an empty database
(PostgreSQL), then start the agent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from conveyor.environ import inherited

# pg_dump of a small state database takes well under a second; a stuck server must not hold
# the agent's backup task (or a command) for ever.
PG_DUMP_TIMEOUT = 600.0


class BackupError(Exception):
    """The copy could not be made (its message names the database and the reason)."""


def suffix(dialect: str) -> str:
    """The file name ending of a copy: a SQLite database or an SQL script."""
    return ".db" if dialect == "sqlite" else ".sql"


def backup_sqlite(engine: Engine, target: Path) -> None:
    part = target.with_name(target.name + ".part")
    part.unlink(missing_ok=True)
    raw = engine.raw_connection()
    try:
        source = raw.driver_connection
        assert isinstance(source, sqlite3.Connection)
        dest = sqlite3.connect(part)
        try:
            source.backup(dest)
        finally:
            dest.close()
        os.chmod(part, 0o600)
        os.replace(part, target)
    except (sqlite3.Error, OSError) as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise BackupError(str(exc)) from exc
    finally:
        raw.close()


def backup_postgres(url: URL, target: Path) -> None:
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise BackupError(
            "pg_dump is not installed: install the PostgreSQL client "
            "(apt-get install postgresql-client)"
        )
    env = inherited()
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    # The URL without its password, as libpq reads it.
    dbname = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    part = target.with_name(target.name + ".part")
    try:
        proc = subprocess.run(
            [pg_dump, "--no-owner", "--no-privileges", f"--file={part}", f"--dbname={dbname}"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PG_DUMP_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        part.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {exc}") from exc
    if proc.returncode != 0:
        part.unlink(missing_ok=True)
        lines = proc.stderr.strip().splitlines()
        raise BackupError(f"pg_dump failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    os.chmod(part, 0o600)
    os.replace(part, target)
