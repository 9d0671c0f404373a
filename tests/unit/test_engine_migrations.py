"""Migrations as steps of a deployment, against the real PostgreSQL (a database per test).

The engine runs over the in-memory runtime and router (engine_doubles); the app database is
real. Expand migrations run before a release starts, contract ones wait for the end of the
standby window (the wall clock is injected and moved, nothing sleeps), a failing migration
fails the deploy with file, line and PostgreSQL's message before anything starts, and
`rollback --migrations down` undoes what the rolled-back deployment applied.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from engine_doubles import Rig, make_rig, run

from conveyor.store import audit

pytestmark = pytest.mark.postgres

USERS = """\
-- +goose Up
CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, legacy text);

-- +goose Down
DROP TABLE users;
"""
EMAIL = """\
-- +goose Up
SET lock_timeout = '5s';
ALTER TABLE users ADD COLUMN email text;

-- +goose Down
SET lock_timeout = '5s';
ALTER TABLE users DROP COLUMN email;
"""
INDEX = """\
-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX CONCURRENTLY users_name ON users (name);

-- +goose Down
DROP INDEX CONCURRENTLY users_name;
"""
DROP_LEGACY = """\
-- conveyor:contract
-- +goose Up
SET lock_timeout = '5s';
ALTER TABLE users DROP COLUMN legacy;
"""
BROKEN = """\
-- +goose Up
CREATE TABLE audit (id int);

INSERT INTO audit
  VALUES ('not a number');
"""


class Wall:
    """The wall clock the engine records and times the standby window by, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def app_db(fresh_pg_url: str) -> str:
    return fresh_pg_url


def rig_for(tmp_path: Path, url: str) -> tuple[Rig, Wall]:
    wall = Wall()
    return make_rig(tmp_path, f'\n[migrations]\ndatabase_url = "{url}"\n', wall=wall), wall


def v2_over_v1(tmp_path: Path, url: str, v2: dict[str, str]) -> Rig:
    """v1 creates the users table, v2 brings `v2`'s migrations: both deployed."""
    rig, _ = rig_for(tmp_path, url)
    release(rig, "v1", {"001_users.sql": USERS})
    assert deploy(rig, "v1").exit_code == 0
    release(rig, "v2", v2)
    assert deploy(rig, "v2").exit_code == 0
    return rig


def release(rig: Rig, version: str, files: dict[str, str]) -> None:
    folder = rig.dir / "src" / "migrations"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    rig.release(version)


def columns(url: str, table: str = "users") -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchall()
    return {str(r[0]) for r in rows}


def indexes(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'users'")
        return {str(r[0]) for r in rows.fetchall()}


def events(rig: Rig, deployment: int, state: str) -> list[dict[str, Any]]:
    return [
        {"reason": e.reason, **e.data} for e in rig.store.events(deployment) if e.state == state
    ]


def deploy(rig: Rig, version: str) -> Any:
    return run(rig.engine.deploy("dev", version, rig.emit))


def test_expand_before_start_and_contract_when_the_standby_window_ends(
    tmp_path: Path, app_db: str
) -> None:
    rig, wall = rig_for(tmp_path, app_db)
    release(rig, "v1", {"001_users.sql": USERS})
    first = deploy(rig, "v1")
    assert first.exit_code == 0, first.reason
    applied = events(rig, first.deployment_id, "migrated")[0]["migrations"]
    assert [(m["version"], m["kind"]) for m in applied] == [(1, "expand")]
    assert "seconds" in applied[0]
    release(rig, "v2", {"002_email.sql": EMAIL, "003_drop_legacy.sql": DROP_LEGACY})
    second = deploy(rig, "v2")
    assert second.exit_code == 0, second.reason
    # The old version still runs on standby: the expand migration is in, the contract waits.
    assert {"email", "legacy"} <= columns(app_db)
    held = events(rig, second.deployment_id, "contract_held")
    assert held[0]["held"] == [3]
    assert any(e.get("step") == "migrate" for e in rig.events)  # shown as progress
    run(rig.engine.supervise_once())  # the window is still open: nothing is contracted
    assert "legacy" in columns(app_db)
    # The standby window ends: its color is stopped, then the contract migration runs.
    wall.now += timedelta(minutes=11)
    notes = run(rig.engine.supervise_once())
    assert any("applied contract migrations 3 drop_legacy" in n for n in notes), notes
    assert "legacy" not in columns(app_db)
    done = events(rig, second.deployment_id, "contract")[0]["migrations"]
    assert [(m["version"], m["kind"]) for m in done] == [(3, "contract")]


def test_a_failing_migration_fails_the_deploy_before_anything_starts(
    tmp_path: Path, app_db: str
) -> None:
    rig, _ = rig_for(tmp_path, app_db)
    release(rig, "v1", {"001_users.sql": USERS})
    assert deploy(rig, "v1").exit_code == 0
    started = len(rig.runtime.w.started)
    release(rig, "v2", {"002_broken.sql": BROKEN})
    failed = deploy(rig, "v2")
    assert failed.exit_code == 1
    assert "002_broken.sql:5" in failed.reason, failed.reason
    assert "invalid input syntax for type integer" in failed.reason
    assert "nothing was started or switched" in failed.reason
    assert len(rig.runtime.w.started) == started  # no process of v2
    assert [role for *_, role in rig.roles()] == ["active"]
    assert rig.roles()[0][2] == "v1"
    with psycopg.connect(app_db) as conn:
        found = conn.execute("SELECT to_regclass('audit')").fetchone()
    assert found == (None,)  # the failed migration left nothing


def test_rollback_with_migrations_down_undoes_what_the_release_applied(
    tmp_path: Path, app_db: str
) -> None:
    rig = v2_over_v1(tmp_path, app_db, {"002_users_name.sql": INDEX})
    assert "users_name" in indexes(app_db)
    back = run(rig.engine.rollback("dev", rig.emit, migrations_down=True))
    assert back.exit_code == 0, back.reason
    assert {r[2] for r in rig.roles() if r[3] == "active"} == {"v1"}
    assert "users_name" not in indexes(app_db)
    undone = events(rig, back.deployment_id, "migrated_down")[0]["migrations"]
    assert [(m["version"], m["direction"]) for m in undone] == [(2, "down")]


def test_a_destructive_down_needs_force(tmp_path: Path, app_db: str) -> None:
    rig = v2_over_v1(tmp_path, app_db, {"002_email.sql": EMAIL})
    refused = run(rig.engine.rollback("dev", rig.emit, migrations_down=True))
    # Traffic is back on v1 either way; the schema change stays, and the exit says so.
    assert refused.exit_code == 1
    assert "destroy data" in refused.reason and "--force" in refused.reason
    assert "email" in columns(app_db)
    assert {r[2] for r in rig.roles() if r[3] == "active"} == {"v1"}


def test_a_forced_destructive_down_runs(tmp_path: Path, app_db: str) -> None:
    rig = v2_over_v1(tmp_path, app_db, {"002_email.sql": EMAIL})
    back = run(rig.engine.rollback("dev", rig.emit, migrations_down=True, force=True))
    assert back.exit_code == 0, back.reason
    assert "email" not in columns(app_db)


PLAIN_INDEX = """\
-- +goose Up
{allow}CREATE INDEX users_name ON users (name);

-- +goose Down
DROP INDEX users_name;
"""


def test_a_lint_error_refuses_the_deploy_and_an_allowance_is_audited(
    tmp_path: Path, app_db: str
) -> None:
    pytest.importorskip("conveyor.migrations.lint", reason="the migration linter is not here")
    rig, _ = rig_for(tmp_path, app_db)
    release(rig, "v1", {"001_users.sql": USERS})
    assert deploy(rig, "v1").exit_code == 0
    release(rig, "v2", {"002_users_name.sql": PLAIN_INDEX.format(allow="")})
    refused = deploy(rig, "v2")
    assert refused.exit_code == 1
    assert "002_users_name.sql:2: create-index-without-concurrently" in refused.reason
    assert "users_name" not in indexes(app_db)
    allow = "-- conveyor:allow create-index-without-concurrently because users is tiny\n"
    (rig.dir / "src" / "migrations" / "002_users_name.sql").unlink()
    release(rig, "v3", {"002_users_name.sql": PLAIN_INDEX.format(allow=allow)})
    assert deploy(rig, "v3").exit_code == 0
    assert "users_name" in indexes(app_db)
    entries = [e for e in audit.entries(rig.store) if e.action == "migration.allow"]
    assert len(entries) == 1
    assert "users is tiny" in entries[0].detail
