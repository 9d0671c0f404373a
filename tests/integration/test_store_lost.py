"""A state database that goes away under a running process: a SQLite file deleted or replaced
(another inode), a PostgreSQL database dropped. Each failure is one StoreError line that names
the database and says what to do, never a driver traceback."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from conveyor.store import ReleaseRecord, Store, StoreError, StoreLost

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    """A connection to the real server's maintenance database (skip, or fail under CI)."""
    dsn = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but PostgreSQL is not reachable: {exc}")
        pytest.skip(f"PostgreSQL is not reachable: {exc}")


def release(version: str) -> ReleaseRecord:
    return ReleaseRecord("shop", version, None, f"sha256-{version}", 10, T0)


def opened(tmp_path: Path) -> tuple[Store, Path]:
    path = tmp_path / "home" / "state.db"
    store = Store.open(f"sqlite:///{path}")
    store.add_release(release("v1"))
    return store, path


def test_a_deleted_file_is_noticed_on_the_next_read_and_write(tmp_path: Path) -> None:
    store, path = opened(tmp_path)
    assert store.lost() is None
    path.unlink()
    assert store.lost() == f"the state database sqlite:///{path} was deleted while it was open"
    for attempt in (lambda: store.add_release(release("v2")), lambda: store.list_releases("shop")):
        with pytest.raises(StoreLost) as caught:
            attempt()
        assert str(path) in str(caught.value)
        assert "conveyor agent stop --keep-running" in str(caught.value)
        assert "\n" not in str(caught.value)
    # The new file that appears later is still not the one this store opened.
    path.write_bytes(b"")
    assert "deleted" in (store.lost() or "")
    store.close()


def test_a_replaced_file_is_noticed_and_stays_lost(tmp_path: Path) -> None:
    store, path = opened(tmp_path)
    copy = tmp_path / "copy.db"
    with (
        contextlib.closing(sqlite3.connect(path)) as src,
        contextlib.closing(sqlite3.connect(copy)) as dst,
    ):
        src.backup(dst)
    os.replace(copy, path)
    assert "was replaced while it was open" in (store.lost() or "")
    with pytest.raises(StoreLost):
        store.get_release("shop", "v1")
    store.close()
    # A store opened afresh on the file now there reads it.
    again = Store.open(f"sqlite:///{path}")
    assert again.lost() is None
    assert [r.version for r in again.list_releases("shop")] == ["v1"]
    again.close()


def test_opening_beside_the_journal_of_a_deleted_file_is_refused(tmp_path: Path) -> None:
    store, path = opened(tmp_path)
    path.unlink()  # store still holds it open: its -wal and -shm stay
    assert path.with_name("state.db-wal").exists()
    with pytest.raises(StoreError) as caught:
        Store.open(f"sqlite:///{path}")
    message = str(caught.value)
    assert "is missing but its journal state.db-wal is still there" in message
    assert "state.db-wal and state.db-shm" in message
    assert not path.exists()  # nothing was created
    # Closing the store that lost its file takes that journal away: a new start is possible.
    store.close()
    assert not path.with_name("state.db-wal").exists()
    fresh = Store.open(f"sqlite:///{path}")
    assert fresh.list_releases("shop") == []
    fresh.close()


def test_a_failing_sqlite_database_is_one_line(tmp_path: Path) -> None:
    store, path = opened(tmp_path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TABLE deployment_events")
        conn.commit()
    with pytest.raises(StoreError) as caught:
        store.events(1)
    message = str(caught.value)
    assert message.startswith(
        f"the state database sqlite:///{path} failed: no such table: deployment_events"
    )
    assert "conveyor doctor" in message and "\n" not in message
    store.close()


def test_a_dropped_postgresql_database_is_one_line() -> None:
    admin = pg_admin()
    name = f"conveyor_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        store = Store.open(f"postgresql://postgres:sekrit@127.0.0.1:5432/{name}")
        try:
            store.add_release(release("v1"))
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            with pytest.raises(StoreError) as caught:
                store.list_releases("shop")
        finally:
            store.close()
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    message = str(caught.value)
    assert message.startswith(
        f"the state database postgresql+psycopg://postgres:***@127.0.0.1:5432/{name} failed"
    )
    assert "sekrit" not in message
    assert "database exists" in message
    assert "\n" not in message


def test_backups_of_sqlite_and_postgresql_restore(tmp_path: Path) -> None:
    store, _ = opened(tmp_path)
    copy = tmp_path / "saved" / "copy.db"
    assert store.backup(copy) == copy.stat().st_size
    assert oct(copy.stat().st_mode & 0o777) == "0o600"
    store.close()
    restored = Store.open(f"sqlite:///{copy}")
    assert [r.version for r in restored.list_releases("shop")] == ["v1"]
    restored.close()

    admin = pg_admin()
    if shutil.which("psql") is None and os.environ.get("CI") != "true":
        pytest.skip("psql is not installed")
    first, second = (f"conveyor_test_{secrets.token_hex(6)}" for _ in range(2))
    with admin:
        for name in (first, second):
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            pg = Store.open(f"postgresql://postgres@127.0.0.1:5432/{first}")
            pg.add_release(release("v1"))
            dump = tmp_path / "pg.sql"
            pg.backup(dump)
            pg.close()
            # The documented restore: the SQL script loaded with psql into an empty database.
            subprocess.run(
                [
                    "psql",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "--single-transaction",
                    "-f",
                    str(dump),
                    f"postgresql://postgres@127.0.0.1:5432/{second}",
                ],
                check=True,
                capture_output=True,
            )
            back = Store.open(f"postgresql://postgres@127.0.0.1:5432/{second}")
            assert [r.version for r in back.list_releases("shop")] == ["v1"]
            back.close()
        finally:
            for name in (first, second):
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
