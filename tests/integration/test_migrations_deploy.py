"""Migrations in a deploy, end to end: the CLI, the agent, real processes and the real
PostgreSQL (a database per test). The database URL is a secret in conveyor's own store, the
same one the service gets."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from test_secrets_deploy import configure, served, set_secret, with_master_key

from conftest import Project, wait_for

pytestmark = pytest.mark.postgres

USERS = "-- +goose Up\nCREATE TABLE users (id bigint PRIMARY KEY, legacy text);\n"
EMAIL = "-- +goose Up\nSET lock_timeout = '5s';\nALTER TABLE users ADD COLUMN email text;\n"
DROP_LEGACY = "-- +goose Up\nSET lock_timeout = '5s';\nALTER TABLE users DROP COLUMN legacy;\n"


def columns(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def release(project: Project, version: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = project.dir / "migrations" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    project.release(version)


def events(project: Project, state: str) -> list[dict[str, Any]]:
    _, history = project.history("dev")
    return [e for d in history for e in d["events"] if e["state"] == state]


def test_expand_in_the_deploy_contract_after_the_standby_window(
    project: Project, fresh_pg_url: str
) -> None:
    with_master_key(project)
    configure(project, names=("DATABASE_URL",), standby="2s")
    with (project.dir / "conveyor.toml").open("a") as f:
        f.write('\n[migrations]\ndatabase_url_secret = "DATABASE_URL"\n')
    set_secret(project, "DATABASE_URL", fresh_pg_url)
    release(project, "v1", {"001_users.sql": USERS})
    code, out = project.deploy("v1")
    assert code == 0, out
    assert "legacy" in columns(fresh_pg_url)
    assert served(project)["DATABASE_URL"]["sha256"]  # the service got the same secret
    release(project, "v2", {"002_email.sql": EMAIL, "contract/003_drop_legacy.sql": DROP_LEGACY})
    deploying = project.cli("deploy", "v2", "--env", "dev")
    assert deploying.returncode == 0, deploying.stderr
    # Shown as steps of the deploy, before the new color starts.
    shown = deploying.stdout
    assert shown.index("applied 1 expand migration: 2 email") < shown.index("starting web")
    assert "contract migrations held until the previous version is stopped: 3 drop_legacy" in shown
    assert "email" in columns(fresh_pg_url)
    # Held while v1 is on standby (the engine test times it with an injected clock: here the
    # two seconds may be over already on a loaded machine).
    assert events(project, "contract_held")[0]["held"] == [3]
    # Two seconds of standby, then the supervisor stops v1 and contracts the schema.
    wait_for(lambda: "legacy" not in columns(fresh_pg_url), 60, "the contract migration")
    applied = wait_for(lambda: events(project, "contract"), 30, "the contract in the history")
    assert [m["version"] for m in applied[0]["migrations"]] == [3]
    assert [m["version"] for m in events(project, "migrated")[0]["migrations"]] == [
        2
    ]  # newest first
