"""One PostgreSQL database shared by two projects (standing in for two hosts), `[state] url`,
`conveyor db upgrade`, and a schema newer than this conveyor."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from conftest import Project, temp_project, wait_for
from conveyor import __version__
from conveyor.store.db import NewerSchema, Store, normalize_url, schema_heads

HEAD = ", ".join(sorted(schema_heads() or ()))

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_two_agents_sharing_one_database_race_and_exactly_one_deploys(fresh_pg_url: str) -> None:
    url = fresh_pg_url
    with temp_project(url) as a, temp_project(url) as b:
        for proj in (a, b):
            proj.configure(start_timeout="60s")
        # Never healthy: the deploy that gets the lock stays in progress until aborted.
        a.release("stuck", healthy=False)
        # The releases are shared through the database; the archive is copied as a shared
        # release store would hand it to the second host.
        objects = Path("releases") / "objects"
        shutil.copytree(a.home / objects, b.home / objects)
        for proj in (a, b):  # both agents up: the deploys race, not the agents' start
            started = proj.cli("agent", "start")
            assert started.returncode == 0, started.stderr
        racers = {
            n: p.spawn("deploy", "stuck", "--env", "dev", "--json") for n, p in (("a", a), ("b", b))
        }
        try:
            wait_for(lambda: any(p.poll() is not None for p in racers.values()), what="one refusal")
            [loser] = [name for name, p in racers.items() if p.poll() is not None]
            winner = "b" if loser == "a" else "a"
            out, _ = racers[loser].communicate(timeout=60)
            assert racers[loser].returncode == 1, out
            projects = {"a": a, "b": b}
            agent_pid = projects[winner].pid("agent")
            assert "already in progress (deploy of stuck)" in out and f"pid {agent_pid}" in out
            assert racers[winner].poll() is None  # the winner's deploy goes on
            aborted = projects[winner].cli("abort", "--env", "dev")
            assert aborted.returncode == 0, aborted.stderr
            racers[winner].communicate(timeout=120)
            assert racers[winner].returncode == 1  # aborted
        finally:
            for p in racers.values():
                if p.poll() is None:
                    p.kill()
        # Exactly one deploy proceeded; both projects see the one audit log.
        assert a.db("SELECT version, outcome FROM deployments") == [("stuck", "aborted")]
        code, log = b.json("audit", "--env", "dev")
        assert code == 0
        outcomes = sorted((e["action"], e["outcome"]) for e in log["entries"])
        assert outcomes == [("abort", "ok"), ("deploy", "failed"), ("deploy", "refused")]


def test_the_state_url_in_conveyor_toml(fresh_pg_url: str, project: Project) -> None:
    # fresh_pg_url first: the database is dropped after the project's agent stopped.
    url = fresh_pg_url
    project.configure()
    config = project.dir / "conveyor.toml"
    config.write_text(config.read_text() + f'\n[state]\nurl = "{url}"\n')
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    assert not (project.home / "state.db").exists()  # everything went to PostgreSQL
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version, outcome FROM deployments")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("v1", "succeeded")]


def test_a_bad_state_url_is_a_config_error(project: Project) -> None:
    project.configure()
    config = project.dir / "conveyor.toml"
    config.write_text(config.read_text() + '\n[state]\nurl = "mysql://u:secret@h/db"\n')
    # A command that reads the configuration first names the key (exit 2)...
    proc = project.cli("locks")
    assert proc.returncode == 2
    assert "state.url: url must be postgresql://" in proc.stderr
    assert "secret" not in proc.stderr
    # ...one that opens the database first refuses it as a database (exit 1), masked too.
    proc = project.cli("status", "--env", "dev")
    assert proc.returncode == 1 and "unsupported database mysql://u:***@h/db" in proc.stderr
    assert "secret" not in proc.stderr


def test_db_upgrade_brings_a_0_1_database_up_and_records_the_writer(project: Project) -> None:
    project.configure()
    project.home.mkdir()
    shutil.copy(FIXTURES / "state-0.1.db", project.home / "state.db")
    code, out = project.json("db", "upgrade")
    assert code == 0, out
    assert (out["before"], out["after"], out["upgraded"]) == (
        ["0001"],
        sorted(schema_heads() or ()),
        True,
    )
    assert out["writer"] == __version__
    proc = project.cli("db", "upgrade")
    assert proc.returncode == 0 and f"is up to date ({HEAD})" in proc.stdout
    # The history written by 0.1 is still there.
    assert project.db("SELECT COUNT(*) FROM deployments")[0][0] > 0


def test_a_schema_newer_than_this_conveyor_is_refused_naming_its_writer(
    url: str, tmp_path: Path
) -> None:
    Store.open(url).close()
    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE conveyor_alembic_version SET version_num = '0099'"))
            conn.execute(text("UPDATE conveyor_meta SET value = '9.9.0'"))
    finally:
        engine.dispose()
    with pytest.raises(NewerSchema) as refused:
        Store.open(url)
    message = str(refused.value)
    assert "schema revision 0099, written by conveyor 9.9.0" in message
    assert f"this conveyor {__version__} knows revisions up to {HEAD}" in message
    # The agent refuses to start on it, and says why.
    (tmp_path / "conveyor.toml").write_text(f'[app]\nname = "shop"\n[state]\nurl = "{url}"\n')
    agent = subprocess.run(
        [sys.executable, "-m", "conveyor.agent", "--project", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "CONVEYOR_DATABASE_URL"},
    )
    assert agent.returncode == 1
    assert "written by conveyor 9.9.0" in agent.stderr
