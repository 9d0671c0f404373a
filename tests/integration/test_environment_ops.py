"""Taking an environment down and back, redeploying the live version, a port someone else holds,
and what services and hooks find on their PATH: through the CLI, against real processes."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from conftest import Project, wait_for


def test_stop_needs_yes_then_takes_the_environment_down_and_start_brings_it_back(
    project: Project,
) -> None:
    project.configure()
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    assert project.serving() == "v1"

    refused = project.cli("stop", "--env", "dev")  # no terminal, no --yes: nothing happens
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    assert project.serving() == "v1"

    code, out = project.json("stop", "--env", "dev", "--yes")
    assert code == 0, out
    assert out["outcome"] == "succeeded" and out["version"] == "v1"
    assert project.serving() == ""  # the public port is closed
    assert project.db("SELECT count(*) FROM instances") == [(0,)]
    again = project.cli("stop", "--env", "dev", "--yes")
    assert again.returncode == 1 and "stopped already" in again.stderr

    code, history = project.history("dev")
    assert [(h["kind"], h["outcome"]) for h in history][:2] == [
        ("stop", "succeeded"),
        ("deploy", "succeeded"),
    ]

    started = project.cli("start", "--env", "dev")
    assert started.returncode == 0, started.stderr
    assert "v1 is live in dev again" in started.stdout
    wait_for(lambda: project.serving() == "v1", what="v1 serving again")
    refused_start = project.cli("start", "--env", "dev")
    assert refused_start.returncode == 1 and "nothing to start" in refused_start.stderr


def test_redeploying_the_live_version_needs_force(project: Project) -> None:
    project.configure()
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    assert project.deploy("v2")[0] == 0
    same = project.cli("deploy", "v2", "--env", "dev")
    assert same.returncode == 2
    assert "v2 is already live in dev" in same.stderr and "--force" in same.stderr
    # Nothing was touched: v1 still waits on standby.
    rows = project.db("SELECT version, role FROM instances ORDER BY version")
    assert rows == [("v1", "standby"), ("v2", "active")]
    forced = project.cli("deploy", "v2", "--env", "dev", "--force")
    assert forced.returncode == 0, forced.stderr
    rollback = project.cli("rollback", "--env", "dev")
    assert rollback.returncode == 0, rollback.stderr
    assert "rolled back dev from v2 to v2" in rollback.stdout  # both versions named


def test_a_port_held_by_someone_else_is_refused_before_anything_starts(
    project: Project,
) -> None:
    project.configure()
    project.release("v1")
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", project.port))
        holder.listen()
        proc = project.cli("deploy", "v1", "--env", "dev")
    assert proc.returncode == 2
    assert f"services.web.port: port {project.port} on 127.0.0.1 is held by pid {os.getpid()}" in (
        proc.stderr.replace("\n", " ")
    )
    assert project.db("SELECT count(*) FROM deployments") == [(0,)]
    assert project.db("SELECT count(*) FROM instances") == [(0,)]


def test_services_get_the_path_conveyor_was_run_with_and_hooks_get_conveyor_bin(
    project: Project,
) -> None:
    project.configure(
        extra='[environments.dev.hooks]\npost_deploy = "echo BIN=$CONVEYOR_BIN > hook.out"\n'
    )
    marker = project.dir / "bin-first"
    marker.mkdir()
    project.env["PATH"] = f"{marker}{os.pathsep}{os.environ.get('PATH', '')}"
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    [(pid,)] = project.db("SELECT json_extract(handle, '$.ref.pid') FROM instances")
    environ = dict(
        line.split("=", 1)
        for line in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
        if "=" in line
    )
    # Exactly the PATH of the shell that ran conveyor: conveyor's own bin is not put first.
    assert environ["PATH"] == project.env["PATH"]
    assert not environ["PATH"].startswith(os.path.dirname(sys.executable) + os.pathsep)
    hook_out = wait_for(
        lambda: next(project.home.glob("releases/trees/*/hook.out"), None), what="hook output"
    )
    bin_ = hook_out.read_text().strip().removeprefix("BIN=")
    assert bin_.split()[0].startswith(os.path.dirname(sys.executable))
