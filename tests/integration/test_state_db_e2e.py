"""The state database deleted, and replaced, under a running agent (issue 8), through the real
CLI, agent, proxy and demo app: every command says so in one line (exit 1), the agent stops
acting and keeps the traffic as it is, and a restart on the file now there goes on."""

from __future__ import annotations

import contextlib
import os
import sqlite3

from conftest import PID, Project, alive, proc, wait_for


def one_line_error(proc_stderr: str, *words: str) -> None:
    lines = proc_stderr.strip().splitlines()
    assert len(lines) == 1, proc_stderr
    assert lines[0].startswith("error: "), proc_stderr
    for word in words:
        assert word in lines[0], proc_stderr


def lost(project: Project) -> str:
    code, data = project.json("agent", "status")
    assert code == 0, data
    return str(data.get("store_lost") or "")


def test_deleted_under_a_running_agent(project: Project) -> None:
    project.configure()
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    db = project.home / "state.db"
    [(pid,)] = project.db(f"SELECT {PID} FROM instances")
    app = proc(pid)
    db.unlink()
    # The supervisor notices on its next pass, without any command asking.
    said = wait_for(lambda: lost(project), what="the agent to notice")
    assert f"{db} was deleted while it was open" in said
    assert "keeps their traffic as it is" in said
    for args in (
        ("history", "--env", "dev"),
        ("releases",),
        ("deploy", "v1", "--env", "dev"),
        ("status", "--env", "dev"),
        ("rollback", "--env", "dev"),
    ):
        ran = project.cli(*args)
        assert ran.returncode == 1, (args, ran.stdout, ran.stderr)
        one_line_error(ran.stderr, str(db))
        assert "Traceback" not in ran.stdout + ran.stderr
    code, data = project.json("history", "--env", "dev")
    assert code == 1 and str(db) in data["error"]
    # Nothing created a new empty database beside the lost one, and the traffic is as it was.
    assert not db.exists()
    assert project.get()[2] == "v1"
    log = (project.home / "logs" / "agent.log").read_text()
    assert "Traceback" in log and "StoreError" in log
    # Stopped, the agent leaves no journal of the deleted file: a new agent starts on an empty
    # database (what still runs is then found by its markers: test_orphans_e2e.py).
    assert project.cli("agent", "stop", "--keep-running").returncode == 0
    assert not (project.home / "state.db-wal").exists()
    done = project.cli("history", "--env", "dev")
    assert done.returncode == 0, done.stderr
    assert project.get()[2] == "v1"
    # The app it no longer knows is found by its marker, and stopped with the agent.
    code, info = project.json("agent", "status")
    assert [(m["pgid"], m["version"]) for m in info["orphans"]] == [(app[0], "v1")]
    assert project.cli("agent", "stop", "--yes").returncode == 0
    assert not alive(app)


def test_replaced_under_a_running_agent(project: Project) -> None:
    project.configure()
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    db = project.home / "state.db"
    copy = project.home / "copy.db"
    with (
        contextlib.closing(sqlite3.connect(db)) as src,
        contextlib.closing(sqlite3.connect(copy)) as dst,
    ):
        src.backup(dst)
    os.replace(copy, db)  # as a restore by `mv` would, under the running agent
    said = wait_for(lambda: lost(project), what="the agent to notice")
    assert f"{db} was replaced while it was open" in said
    ran = project.cli("deploy", "v1", "--env", "dev", "--force")
    assert ran.returncode == 1
    one_line_error(ran.stderr, "was replaced", "conveyor agent stop --keep-running")
    assert project.get()[2] == "v1"
    # Restarted, the agent takes the file there now: the same state, the app adopted.
    assert project.cli("agent", "stop", "--keep-running").returncode == 0
    code, data = project.json("status", "--env", "dev")
    assert code == 0, data
    assert data["services"][0]["active"]["version"] == "v1"
    assert lost(project) == ""
    project.release("v2")
    assert project.deploy("v2")[0] == 0
    assert project.get()[2] == "v2"
