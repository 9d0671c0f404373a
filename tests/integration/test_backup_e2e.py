"""`conveyor db backup` while the agent runs, and a restore (issue 8): a backup taken during a
deploy, put back in place of state.db, gives a working agent. Also the agent's own backups.
Real CLI, agent, proxy and demo app."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

from test_agent_comes_back import BAKING, baking, deploying

from conftest import Project, wait_for


def test_a_backup_taken_during_a_deploy_restores_to_a_working_agent(project: Project) -> None:
    project.configure(rollout=BAKING)
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    backup = project.dir / "saved" / "state.db"
    with deploying(project, "v2") as child:
        wait_for(lambda: baking(project, "v2"), what="v2 live and baking")
        code, made = project.json("db", "backup", str(backup))
        assert code == 0, made
        assert made["path"] == str(backup) and made["bytes"] == backup.stat().st_size
        assert project.cli("promote", "--env", "dev").returncode == 0  # ends the bake
        assert child.wait(timeout=120) == 0
    # The copy is a whole database, written while the agent wrote: deployment #2 in progress.
    with contextlib.closing(sqlite3.connect(backup)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert list(conn.execute("SELECT id, outcome FROM deployments ORDER BY id")) == [
            (1, "succeeded"),
            (2, "in_progress"),
        ]
    # A second backup to the same place is refused: a backup is never overwritten.
    again = project.cli("db", "backup", str(backup))
    assert again.returncode == 2 and "already exists" in again.stderr

    # Restore, as documented: the agent stopped (apps keep serving), the copy in place, start.
    assert project.cli("agent", "stop", "--keep-running").returncode == 0
    for name in ("state.db-wal", "state.db-shm"):
        (project.home / name).unlink(missing_ok=True)
    shutil.copyfile(backup, project.home / "state.db")
    code, status = project.json("status", "--env", "dev")
    assert code == 0, status
    # The deployment the backup saw in progress was interrupted: back on the version it replaced.
    assert status["services"][0]["active"]["version"] == "v1"
    assert project.serving() == "v1"
    code, history = project.history("dev")
    assert code == 0, history
    assert [(d["id"], d["kind"], d["outcome"]) for d in history] == [
        (3, "rollback", "succeeded"),  # the switch back to v1 on its standby
        (2, "deploy", "aborted"),
        (1, "deploy", "succeeded"),
    ]
    # And it deploys on: ids go on from the backup's, v2 goes live again (no bake to wait out).
    project.configure()
    code, done = project.deploy("v2")
    assert code == 0 and done["deployment"] == 4, done
    assert project.serving() == "v2"


def test_the_agent_takes_its_own_backups_and_keeps_the_newest(project: Project) -> None:
    project.configure(extra="")
    with open(project.dir / "conveyor.toml", "a") as f:
        f.write('\n[agent]\nbackup_every = "1s"\nbackup_keep = 2\n')
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    folder = project.home / "backups"

    def daily() -> list[Path]:
        return sorted(folder.glob("daily-*.db")) if folder.exists() else []

    first = wait_for(daily, what="the first backup")[0]
    wait_for(lambda: first not in daily() and len(daily()) == 2, what="rotation")
    newest = daily()[-1]
    with contextlib.closing(sqlite3.connect(newest)) as conn:
        assert list(conn.execute("SELECT version FROM releases")) == [("v1",)]
