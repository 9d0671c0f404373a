"""`conveyor migrate` and `conveyor db backups/restore` through the real CLI, on a fresh
PostgreSQL database of their own."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conveyor.store.db import InstanceRecord, Store
from integration.conftest import Project
from integration.migration_files import DROP_NAME, EMAIL, USERS, query, write

pytestmark = pytest.mark.postgres


@pytest.fixture
def proj(tmp_path: Path, fresh_pg_url: str) -> Project:
    project = Project(tmp_path)
    app_url = fresh_pg_url.replace("postgres@", "postgres:hunter22@")
    project.configure(extra=f'\n[migrations]\ndatabase_url = "{app_url}"\nbackup = true\n')
    project.app_url = fresh_pg_url  # type: ignore[attr-defined]
    # 003 is contract twice over (its mark and its directory): the directory is enough.
    write(
        tmp_path,
        {
            "001_users.sql": USERS,
            "002_email.sql": EMAIL,
            "contract/003_drop_name.sql": DROP_NAME.replace("-- conveyor:contract\n", ""),
        },
    )
    return project


def test_status_up_contract_down_through_the_cli(proj: Project) -> None:
    url = proj.app_url  # type: ignore[attr-defined]
    code, data = proj.json("migrate", "status", "--env", "dev")
    assert code == 0, data
    assert data["database"].endswith("postgres:***@127.0.0.1:5432/" + url.rsplit("/", 1)[1])
    assert [(m["version"], m["kind"], m["state"]) for m in data["migrations"]] == [
        (1, "expand", "pending"),
        (2, "expand", "pending"),
        (3, "contract", "pending"),
    ]
    up = proj.cli("migrate", "up", "--env", "dev")
    assert up.returncode == 0, up.stderr
    assert "held (contract): 3 drop_name" in up.stdout
    assert "applying 1 users (expand)" in up.stderr
    assert "hunter22" not in up.stdout + up.stderr
    code, data = proj.json("migrate", "status", "--env", "dev")
    states = [(m["version"], m["state"], m["actor"]) for m in data["migrations"]]
    assert [s[:2] for s in states] == [(1, "applied"), (2, "applied"), (3, "pending")]
    assert states[0][2]  # recorded with the user who ran it
    # a backup was taken before migrating
    code, listed = proj.json("db", "backups", "--env", "dev")
    assert code == 0 and len(listed["backups"]) == 1
    assert listed["backups"][0]["versions"] == []

    refused = proj.cli("migrate", "contract", "--env", "dev")
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    code, data = proj.json("migrate", "contract", "--env", "dev", "--yes")
    assert code == 0, data
    assert [a["version"] for a in data["applied"]] == [3]
    assert query(url, "SELECT * FROM users") == [(1, None)]

    # down: 003 has no Down section
    code, data = proj.json("migrate", "down", "--env", "dev", "--yes")
    assert code == 1 and "003_drop_name.sql has no Down section" in data["error"]
    (proj.dir / "migrations" / "contract" / "003_drop_name.sql").write_text(
        DROP_NAME + "-- +goose Down\nALTER TABLE users ADD COLUMN name text;\n"
    )
    code, data = proj.json("migrate", "down", "--env", "dev", "--yes", "--to", "1")
    assert code == 1 and "002_email.sql:5: drops" in data["error"]
    code, data = proj.json("migrate", "down", "--env", "dev", "--yes", "--to", "1", "--force")
    assert code == 0, data
    assert [a["version"] for a in data["undone"]] == [3, 2]
    assert query(url, "SELECT id FROM users") == [(1,)]


def test_bad_file_is_exit_2_naming_file_and_line(proj: Project) -> None:
    (proj.dir / "migrations" / "004_bad.sql").write_text("-- +goose Up\nSELECT 'open;\n")
    code, data = proj.json("migrate", "up", "--env", "dev")
    assert code == 2
    assert data["error"].startswith("migrations/004_bad.sql:2: string opened here")
    assert query(proj.app_url, "SELECT to_regclass('users') IS NULL") == [(True,)]  # type: ignore[attr-defined]


def test_a_failing_migration_is_exit_1_with_file_and_line(proj: Project) -> None:
    (proj.dir / "migrations" / "004_bad.sql").write_text(
        "-- +goose Up\nALTER TABLE users ADD COLUMN x int;\nSELECT nosuchcolumn FROM users;\n"
    )
    proc = proj.cli("migrate", "up", "--env", "dev")
    assert proc.returncode == 1
    assert 'migrations/004_bad.sql:3: column "nosuchcolumn" does not exist' in proc.stderr
    code, data = proj.json("migrate", "status", "--env", "dev")
    assert code == 0, data
    assert [m["state"] for m in data["migrations"]] == ["applied", "applied", "pending", "pending"]


def test_restore_a_backup_through_the_cli(proj: Project) -> None:
    url = proj.app_url  # type: ignore[attr-defined]
    assert proj.cli("migrate", "up", "--env", "dev", "--to", "1").returncode == 0
    rows_before = query(url, "SELECT * FROM users")
    assert proj.cli("migrate", "up", "--env", "dev").returncode == 0
    code, listed = proj.json("db", "backups", "--env", "dev")
    assert [b["versions"] for b in listed["backups"]] == [[1], []]
    name = listed["backups"][0]["name"]
    refused = proj.cli("db", "restore", name, "--env", "dev")
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    # a release that was not live when the backup was taken is live now: refused
    store = Store.open(f"sqlite:///{proj.home / 'state.db'}")
    live = InstanceRecord(
        app="shop",
        environment="dev",
        service="web",
        color="blue",
        version="v2",
        digest="sha256:0",
        role="active",
        runtime="local",
        handle={},
        started_at=datetime.now(UTC),
        standby_until=None,
        deployment_id=None,
    )
    store.upsert_instance(live)
    code, data = proj.json("db", "restore", name, "--env", "dev", "--yes")
    assert code == 1 and data["error"].startswith("refused: v2 is live, but nothing was live")
    assert len(query(url, "SELECT * FROM users")) == 1 and query(url, "SELECT email FROM users")
    code, data = proj.json("db", "restore", name, "--env", "dev", "--yes", "--force")
    assert code == 0, data
    store.delete_instance("shop", "dev", "web", "blue")
    store.close()
    code, data = proj.json("db", "restore", name, "--env", "dev", "--yes")
    assert code == 0, data
    assert query(url, "SELECT * FROM users") == rows_before
    code, data = proj.json("migrate", "status", "--env", "dev")
    assert [m["state"] for m in data["migrations"]] == ["applied", "pending", "pending"]
    code, data = proj.json("db", "restore", "nope", "--env", "dev", "--yes")
    assert code == 2 and "no backup 'nope'" in data["error"]


def test_help_has_examples(proj: Project) -> None:
    for command in (
        ("migrate", "status"),
        ("migrate", "up"),
        ("migrate", "down"),
        ("migrate", "contract"),
        ("db", "backups"),
        ("db", "restore"),
    ):
        out = proj.cli(*command, "--help")
        assert out.returncode == 0 and "Example:" in out.stdout, command


def test_the_database_url_comes_from_the_secret_store(tmp_path: Path, fresh_pg_url: str) -> None:
    home = tmp_path / "project"
    home.mkdir()
    project = Project(home)
    project.env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # the key file, outside the project
    project.env.pop("DATABASE_URL", None)
    project.configure(extra='\n[migrations]\ndatabase_url_secret = "DATABASE_URL"\n')
    write(home, {"001_users.sql": USERS})
    # Without the secret: exit 2 naming where it looked and how to set it.
    code, _ = project.json("migrate", "status", "--env", "dev")
    assert code == 2
    stored = subprocess.run(
        [sys.executable, "-m", "conveyor", "secrets", "set", "DATABASE_URL", "--env", "dev"],
        env=project.env,
        cwd=home,
        input=fresh_pg_url + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stored.returncode == 0, stored.stderr
    code, data = project.json("migrate", "up", "--env", "dev")
    assert code == 0, data
    assert query(fresh_pg_url, "select to_regclass('users') is not null") == [(True,)]
