"""Fixtures every test directory shares: the real PostgreSQL server, a fresh database per run.

Tests that take `url` run twice, on SQLite and on PostgreSQL (127.0.0.1:5432, user postgres,
trust). The server missing is a skip on a laptop and a failure under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from conveyor.proxy import native

# CONVEYOR_TEST_PROXY_NATIVE=1 (test_proxy_native.py): the proxy's suites run on its compiled hot
# path, loaded here, before any test module imports one of its modules.
if os.environ.get("CONVEYOR_TEST_PROXY_NATIVE") == "1" and not native.activate().compiled:
    raise RuntimeError(f"CONVEYOR_TEST_PROXY_NATIVE=1 but {native.STATE.reason}")

from conveyor.store.db import Store

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def pg_unavailable(reason: str) -> None:
    # In CI the server is part of the environment: its absence is a failure, not a skip.
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def new_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (its URL), dropped afterwards."""
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pg_unavailable(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    name = f"conveyor_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (one per xdist worker)."""
    with new_pg_database() as url:
        yield url


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own (end-to-end tests: agents, several projects)."""
    with new_pg_database() as url:
        yield url


def reset_pg(url: str) -> None:
    """Empty the database completely, so each test starts from a schema-less database."""
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={dbname}") as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL with nothing in it: once SQLite, once PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/home/state.db"
        return
    pg_url: str = request.getfixturevalue("pg_database")
    reset_pg(pg_url)
    yield pg_url


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    """The store over `url`, opened (so brought to the newest schema)."""
    opened = Store.open(url)
    try:
        yield opened
    finally:
        opened.close()
