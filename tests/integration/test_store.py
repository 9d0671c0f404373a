"""The state store against real SQLite files and the real PostgreSQL server on 127.0.0.1:5432."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from conveyor.store import (
    DeploymentRecord,
    DuplicateRelease,
    InstanceRecord,
    ReleaseRecord,
    Store,
    StoreError,
    UnknownDeployment,
    database_url,
    redacted_url,
)
from conveyor.store.db import ALEMBIC_DIR, normalize_url, schema_heads
from conveyor.store.models import Base

VERSION_TABLE = "conveyor_alembic_version"
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _pg_unavailable(reason: str) -> None:
    # In CI the server is part of the environment: its absence is a failure, not a skip.
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


# The `url` fixture (SQLite, then PostgreSQL: a fresh database per run) is in tests/conftest.py.


def _release(version: str, at: datetime, app: str = "shop") -> ReleaseRecord:
    return ReleaseRecord(
        app=app,
        version=version,
        commit="a" * 40,
        digest=f"sha256-{version}",
        size=42,
        created_at=at,
    )


def _handle(pid: int | None, port: int | None) -> dict[str, object]:
    return {
        "runtime": "local",
        "ref": {"pid": pid, "pgid": pid, "proc_start": 987654321012} if pid else {},
        "endpoints": [{"host": "127.0.0.1", "port": port}] if port else [],
        "started_at": T0.timestamp(),
    }


def _instance(color: str, environment: str = "dev", **changes: object) -> InstanceRecord:
    fields: dict[str, object] = {
        "app": "shop",
        "environment": environment,
        "service": "web",
        "color": color,
        "version": "v1",
        "digest": "sha256-v1",
        "role": "active",
        "runtime": "local",
        "handle": _handle(1234, 41000),
        "started_at": T0,
        "standby_until": None,
        "deployment_id": None,
    }
    fields.update(changes)
    return InstanceRecord(**fields)  # type: ignore[arg-type]


# schema


def _schema_version(url: str) -> list[str]:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return [
                row[0] for row in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            ]
    finally:
        engine.dispose()


def test_open_is_idempotent_and_keeps_data(url: str) -> None:
    first = Store.open(url)
    first.add_release(_release("v1", T0))
    first.close()
    second = Store.open(url)
    try:
        assert [r.version for r in second.list_releases("shop")] == ["v1"]
    finally:
        second.close()
    assert _schema_version(url) == sorted(schema_heads() or ())


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _migrate(url: str, revision: str, down: bool = False) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, revision)
    finally:
        engine.dispose()


def test_state_db_of_conveyor_0_1_upgrades_in_place(tmp_path: Path) -> None:
    """tests/fixtures/state-0.1.db was written by conveyor 0.1's Store (pid/port columns)."""
    home = tmp_path / "home"
    home.mkdir()
    db = home / "state.db"
    db.write_bytes((FIXTURES / "state-0.1.db").read_bytes())
    store = Store.open(f"sqlite:///{db}")
    try:
        rows = {(r.service, r.color): r for r in store.instances("shop")}
        web = rows[("web", "green")]
        assert (web.role, web.version, web.runtime) == ("active", "v2", "local")
        assert web.handle["ref"] == {
            "pid": 4242,
            "pgid": 4242,
            "proc_start": 123456,
            "log": f"{home}/logs/dev/web/green.log",
        }
        assert web.handle["endpoints"] == [{"host": "127.0.0.1", "port": 18001}]
        assert web.handle["started_at"] == web.started_at.timestamp()
        standby = rows[("web", "blue")]
        assert (standby.role, standby.handle["endpoints"][0]["port"]) == ("standby", 18002)
        assert standby.standby_until is not None
        jobs = rows[("jobs", "green")]
        assert (jobs.handle["ref"]["pgid"], jobs.handle["endpoints"]) == (4340, [])
        # The history is untouched, including 0.1's rewritten outcome.
        outcomes = [(d.version, d.outcome) for d in store.list_deployments("shop", "dev")]
        assert outcomes == [("v2", "succeeded"), ("v1", "rolled_back")]
        assert [r.version for r in store.list_releases("shop")] == ["v2", "v1"]
    finally:
        store.close()
    assert _schema_version(f"sqlite:///{db}") == sorted(schema_heads() or ())


def test_instance_handles_migration_both_ways(url: str) -> None:
    _migrate(url, "0001")
    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO instances (app, environment, service, color, version, digest, "
                    "role, pid, pgid, port, proc_start, started_at) VALUES ('shop', 'dev', 'web', "
                    "'blue', 'v1', 'd', 'active', 77, 70, 18003, 999, :at)"
                ),
                {"at": T0},
            )
    finally:
        engine.dispose()
    store = Store.open(url)
    try:
        [row] = store.instances("shop")
        assert row.handle["ref"]["pid"] == 77 and row.handle["ref"]["pgid"] == 70
        assert row.handle["ref"]["proc_start"] == 999
        assert row.handle["endpoints"] == [{"host": "127.0.0.1", "port": 18003}]
    finally:
        store.close()
    _migrate(url, "0001", down=True)
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            back = conn.execute(text("SELECT pid, pgid, port, proc_start FROM instances")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in back] == [(77, 70, 18003, 999)]


def test_migrations_match_the_orm_models(store: Store, url: str) -> None:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_concurrent_first_open_from_several_processes(url: str) -> None:
    # Each process migrates an empty database at the same moment: exactly one creates the
    # schema, the others must wait for it and find it at head.
    script = "import sys; from conveyor.store import Store; Store.open(sys.argv[1]).close()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    assert _schema_version(url) == sorted(schema_heads() or ())


# releases


def test_release_round_trip_and_order(store: Store) -> None:
    store.add_release(_release("v1", T0))
    store.add_release(_release("v3", T0 + timedelta(minutes=2)))
    store.add_release(_release("v2", T0 + timedelta(minutes=1)))
    store.add_release(_release("other", T0, app="blog"))

    assert store.get_release("shop", "v1") == _release("v1", T0)
    assert store.get_release("shop", "nope") is None
    assert store.get_release("blog", "v1") is None
    assert [r.version for r in store.list_releases("shop")] == ["v3", "v2", "v1"]
    assert [r.version for r in store.list_releases("blog")] == ["other"]
    assert store.list_releases("none") == []


def test_duplicate_release_is_refused(store: Store) -> None:
    store.add_release(_release("v1", T0))
    with pytest.raises(DuplicateRelease, match="v1"):
        store.add_release(_release("v1", T0 + timedelta(seconds=1)))
    # The same version of another app is a different release.
    store.add_release(_release("v1", T0, app="blog"))
    assert len(store.list_releases("shop")) == 1


# time zones


def test_datetimes_come_back_aware_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=2))
    local = datetime(2024, 5, 1, 14, 0, 0, 500, tzinfo=paris)
    store.add_release(_release("v1", local))
    got = store.get_release("shop", "v1")
    assert got is not None
    assert got.created_at == local
    assert got.created_at.tzinfo is UTC
    assert got.created_at.hour == 12

    dep = store.create_deployment("shop", "dev", "v1", "deploy", None, local)
    store.add_event(dep, "starting", "", {}, local)
    record = store.get_deployment(dep)
    assert record is not None and record.started_at.tzinfo is UTC
    assert store.events(dep)[0].at.tzinfo is UTC


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        store.add_release(_release("v1", datetime(2024, 5, 1, 12, 0)))
    with pytest.raises(ValueError, match="naive datetime"):
        store.create_deployment("shop", "dev", "v1", "deploy", None, datetime(2024, 5, 1))
    assert store.list_releases("shop") == []


# deployments


def test_deployment_lifecycle(store: Store) -> None:
    dep = store.create_deployment("shop", "dev", "v2", "deploy", "v1", T0, reason="by alice")
    assert store.get_deployment(dep) == DeploymentRecord(
        id=dep,
        app="shop",
        environment="dev",
        version="v2",
        kind="deploy",
        outcome="in_progress",
        started_at=T0,
        finished_at=None,
        reason="by alice",
        previous_version="v1",
    )
    assert store.in_progress("shop", "dev") == store.get_deployment(dep)
    assert store.in_progress("shop", "prod") is None

    store.add_event(dep, "starting", "start green", {"color": "green", "port": 41001}, T0)
    later = T0 + timedelta(seconds=3)
    store.add_event(dep, "healthy", "2 checks passed", {"checks": [1, 2], "ok": True}, later)
    events = store.events(dep)
    assert [(e.state, e.reason, e.data) for e in events] == [
        ("starting", "start green", {"color": "green", "port": 41001}),
        ("healthy", "2 checks passed", {"checks": [1, 2], "ok": True}),
    ]
    assert [e.at for e in events] == [T0, later]
    assert all(e.deployment_id == dep for e in events)

    done = T0 + timedelta(seconds=5)
    store.finish_deployment(dep, "succeeded", "green is live", done)
    finished = store.get_deployment(dep)
    assert finished is not None
    assert (finished.outcome, finished.reason, finished.finished_at) == (
        "succeeded",
        "green is live",
        done,
    )
    assert store.in_progress("shop", "dev") is None

    # A finished deployment keeps its outcome: finishing it again changes nothing.
    assert store.finish_deployment(dep, "failed", "too late", done) is False
    # That a later deployment rolled it back is an event appended to it, shown as its outcome.
    store.add_event(dep, "rolled_back", "rolled back by deployment #9", {"by": 9}, done)
    rolled = store.get_deployment(dep)
    assert rolled is not None
    assert (rolled.outcome, rolled.reason, rolled.finished_at) == (
        "rolled_back",
        "rolled back by deployment #9",
        done,
    )
    assert store.list_deployments("shop", "dev")[0] == rolled


def test_list_deployments_newest_first_with_limit(store: Store) -> None:
    ids = [
        store.create_deployment("shop", "dev", f"v{i}", "deploy", None, T0 + timedelta(seconds=i))
        for i in range(5)
    ]
    store.create_deployment("shop", "prod", "v9", "rollback", "v8", T0)
    store.create_deployment("blog", "dev", "v9", "deploy", None, T0)
    assert [d.id for d in store.list_deployments("shop", "dev")] == ids[::-1]
    assert [d.id for d in store.list_deployments("shop", "dev", limit=2)] == ids[:2:-1]
    assert [d.kind for d in store.list_deployments("shop", "prod")] == ["rollback"]
    assert store.list_deployments("shop", "staging") == []
    # Several unfinished ones (e.g. after a crash): the newest is reported.
    assert store.in_progress("shop", "dev") == store.get_deployment(ids[-1])


def test_unknown_deployment_and_bad_values(store: Store) -> None:
    assert store.get_deployment(999) is None
    assert store.events(999) == []
    with pytest.raises(UnknownDeployment):
        store.add_event(999, "starting", "", {}, T0)
    with pytest.raises(UnknownDeployment):
        store.finish_deployment(999, "failed", "", T0)
    with pytest.raises(ValueError, match="kind"):
        store.create_deployment("shop", "dev", "v1", "upgrade", None, T0)
    dep = store.create_deployment("shop", "dev", "v1", "deploy", None, T0)
    with pytest.raises(ValueError, match="outcome"):
        store.finish_deployment(dep, "great", "", T0)
    with pytest.raises(ValueError, match="outcome"):
        store.finish_deployment(dep, "in_progress", "", T0)


# instances


def test_instances_upsert_list_delete(store: Store) -> None:
    dep = store.create_deployment("shop", "dev", "v1", "deploy", None, T0)
    blue = _instance("blue", deployment_id=dep)
    green = _instance("green", role="standby", standby_until=T0 + timedelta(minutes=10))
    prod = _instance("blue", environment="prod", handle=_handle(None, None))
    for rec in (green, prod, blue):
        store.upsert_instance(rec)
    store.upsert_instance(_instance("blue", app="blog"))

    assert store.instances("shop") == [blue, green, prod]
    assert store.instances("shop", "dev") == [blue, green]
    assert store.instances("shop", "staging") == []

    replaced = _instance(
        "blue", version="v2", digest="sha256-v2", handle=_handle(99, 41001), role="starting"
    )
    store.upsert_instance(replaced)
    assert store.instances("shop", "dev") == [replaced, green]

    store.delete_instance("shop", "dev", "web", "green")
    store.delete_instance("shop", "dev", "web", "green")  # already gone: no error
    assert store.instances("shop", "dev") == [replaced]
    assert len(store.instances("blog")) == 1

    with pytest.raises(ValueError, match="role"):
        store.upsert_instance(_instance("blue", role="retired"))


# urls


def test_database_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CONVEYOR_DATABASE_URL", raising=False)
    assert database_url(tmp_path) == f"sqlite:///{tmp_path}/state.db"
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "postgresql://u:p@db/conveyor")
    assert database_url(tmp_path) == "postgresql://u:p@db/conveyor"


def test_urls_are_normalised_and_redacted() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    shown = redacted_url("postgresql://alice:s3cret@db.internal:5432/conveyor")
    assert "s3cret" not in shown
    assert "alice" in shown and "db.internal" in shown
    assert "s3cret" not in redacted_url("not a url s3cret")


def test_open_errors_are_actionable_and_hide_the_password(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(StoreError, match="cannot open the database") as refused:
            Store.open(f"postgresql://alice:s3cret@127.0.0.1:{port}/conveyor")
    assert "s3cret" not in str(refused.value)
    assert "alice:***@127.0.0.1" in str(refused.value)
    with pytest.raises(StoreError, match="unsupported database mysql"):
        Store.open("mysql://alice:s3cret@127.0.0.1/conveyor")
    with pytest.raises(StoreError, match="invalid database URL"):
        Store.open("not a url")
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot open the database"):
        Store.open(f"sqlite:///{tmp_path}/file/sub/state.db")


def test_missing_postgres_fails_under_ci_and_skips_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but"):
        _pg_unavailable("server down")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="server down"):
        _pg_unavailable("server down")
