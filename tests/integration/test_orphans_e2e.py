"""Processes found without the database (issue 8): every color carries a marker in its
environment, an agent that starts on an empty database lists what it finds as orphans,
`conveyor doctor --fix` stops them, and `conveyor agent stop` stops every process of the
project, known or not. Real CLI, agent, proxy and demo app."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conftest import PGID, PID, Project, alive, proc, wait_for
from conveyor import markers


def app_process(project: Project) -> tuple[int, int]:
    rows = project.db(f"SELECT {PID}, {PGID} FROM instances WHERE role = 'active'")
    assert len(rows) == 1, rows
    return proc(rows[0][0])


def forget_everything(project: Project) -> None:
    """The agent stopped with the apps left running, and its database gone: a fresh start."""
    assert project.cli("agent", "stop", "--keep-running").returncode == 0
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (project.home / name).unlink(missing_ok=True)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_orphans_are_found_and_stopped_after_a_restart_on_an_empty_database(
    project: Project,
) -> None:
    app = v1_live(project)
    marker = environ(app[0])
    assert marker["CONVEYOR_PROJECT_ID"] == markers.project_id(project.home)
    assert marker["CONVEYOR_VERSION"] == "v1" and marker["CONVEYOR_COLOR"] == "blue"
    assert len(marker["CONVEYOR_INSTANCE_ID"]) == 12
    forget_everything(project)

    assert project.cli("agent", "start").returncode == 0
    code, info = project.json("agent", "status")
    assert code == 0
    [orphan] = info["orphans"]
    assert (orphan["pgid"], orphan["version"], orphan["service"]) == (app[0], "v1", "web")
    assert any("conveyor doctor --fix" in note for note in info["notes"]), info["notes"]

    code, report = project.json("doctor")
    assert code == 1 and report["agent"] is True
    assert [m["pgid"] for m in report["orphans"]] == [app[0]]
    assert report["database"]["ok"] is True

    refused = project.cli("doctor", "--fix")  # not a terminal, no --yes: nothing is stopped
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert alive(app)

    code, report = project.json("doctor", "--fix", "--yes")
    assert code == 0, report
    assert [m["pgid"] for m in report["stopped"]] == [app[0]]
    assert report["orphans"] == []
    assert not alive(app)


def v1_live(project: Project) -> tuple[int, int]:
    """v1 deployed and serving; its app process."""
    project.configure()
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    return app_process(project)


def test_agent_stop_stops_orphans_too(project: Project) -> None:
    app = v1_live(project)
    forget_everything(project)
    assert project.cli("agent", "start").returncode == 0
    proc_ = project.cli("agent", "stop", "--yes")
    assert proc_.returncode == 0, proc_.stderr
    assert not alive(app)


def test_agent_stop_without_an_agent_stops_what_carries_the_marker(project: Project) -> None:
    app = v1_live(project)
    proxy = proc(project.pid("proxy") or 0)
    forget_everything(project)
    stopped = project.cli("agent", "stop", "--yes")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped 1 process group" in stopped.stdout and "stopped its proxy" in stopped.stdout
    wait_for(lambda: not alive(proxy), what="the proxy to stop")
    assert not alive(app)


def test_doctor_without_an_agent_reports_a_recorded_color_that_does_not_run(
    project: Project,
) -> None:
    app = v1_live(project)
    assert project.cli("agent", "stop", "--keep-running").returncode == 0
    os.killpg(app[0], signal.SIGKILL)
    wait_for(lambda: not alive(app), what="the app to die")
    code, report = project.json("doctor")
    assert code == 1 and report["agent"] is False
    assert report["missing"] == [
        {"environment": "dev", "service": "web", "color": "blue", "version": "v1", "role": "active"}
    ]
    assert report["orphans"] == []
