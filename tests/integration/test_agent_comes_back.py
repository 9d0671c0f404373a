"""The agent comes back: after `kill -9` of the agent, the next command that looks at or changes an
environment starts it again, and the agent's recovery is over before the command answers (issue 7).

Against real processes: the CLI, the agent, the proxy and the demo app."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import Project, alive, proc, wait_for
from conveyor.procs import read_proc_stat

# A bake long enough to kill the agent in the middle of it.
BAKING = 'bake = "120s"\non_inconclusive = "pass"'


@contextmanager
def deploying(project: Project, version: str) -> Iterator[subprocess.Popen[str]]:
    """`conveyor deploy` running in the background, reaped at the end."""
    child = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "deploy", version, "--env", "dev"],
        env=project.env,
        cwd=project.dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=60)


def kill_agent(project: Project) -> None:
    """SIGKILL the agent, and wait until it is gone."""
    pid = project.pid("agent")
    assert pid is not None
    agent = proc(pid)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(agent), what="the agent to die")


def baking(project: Project, version: str) -> bool:
    """The new version took traffic and its deployment is still in progress (the bake)."""
    rows = project.db("SELECT version, role FROM instances WHERE role = 'active'")
    in_progress = project.db("SELECT id FROM deployments WHERE outcome = 'in_progress'")
    return rows == [(version, "active")] and bool(in_progress)


def interrupt_a_bake(project: Project) -> None:
    """v1 live, v2 deployed and baking, then `kill -9` of the agent: deployment #2 in progress."""
    project.configure(rollout=BAKING)
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    with deploying(project, "v2"):
        wait_for(lambda: baking(project, "v2"), what="v2 live and baking")
        kill_agent(project)


def served_by_status(project: Project) -> str:
    code, data = project.json("status", "--env", "dev")
    assert code == 0, data
    return str(data["services"][0]["active"]["version"])


def test_history_alone_brings_the_agent_back_and_resolves_the_interrupted_deployment(
    project: Project,
) -> None:
    interrupt_a_bake(project)

    # The apps and the proxy keep serving while no agent runs.
    assert project.serving() == "v2"
    assert project.db("SELECT id, outcome FROM deployments WHERE id = 2") == [(2, "in_progress")]

    shown = project.cli("history", "--env", "dev")
    assert shown.returncode == 0, shown.stderr
    # One line on stderr says what happened.
    assert "the agent was not running (last seen " in shown.stderr
    assert "deployment #2 was interrupted and ended on v1 (all traffic on v1)" in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1, shown.stderr

    code, history = project.history("dev")
    assert code == 0
    outcomes = {h["id"]: h["outcome"] for h in history}
    assert outcomes[2] != "in_progress"  # (the switch back may be a deployment of its own)
    assert all(h["outcome"] != "in_progress" for h in history)
    # The agent runs again, and what status says is what the port serves.
    assert read_proc_stat(project.pid("agent") or 0) is not None
    assert served_by_status(project) == "v1" == project.serving()

    # A second command finds the agent running: nothing to say.
    again = project.cli("history", "--env", "dev")
    assert again.returncode == 0 and again.stderr == ""


def test_json_commands_put_the_restart_in_an_agent_field_and_agent_status_names_the_crash(
    project: Project,
) -> None:
    interrupt_a_bake(project)

    code, stopped = project.json("agent", "status")
    assert code == 1 and stopped["running"] is False
    assert stopped["last_run"]["ended"] == "crashed"

    code, data = project.json("status", "--env", "dev")
    assert code == 0, data
    agent = data["agent"]
    assert agent["started"] is True and agent["previous"]["ended"] == "crashed"
    assert [(i["deployment"], i["version"], i["active"]) for i in agent["interrupted"]] == [
        (2, "v2", ["v1"])
    ]
    assert agent["interrupted"][0]["outcome"] != "in_progress"
    assert data["deployment"] is None
    assert data["services"][0]["active"]["version"] == "v1" == project.serving()

    code, running = project.json("agent", "status")
    assert code == 0 and running["running"] is True
    assert running["last_run"]["ended"] == "crashed"
    assert running["started_at"] > running["last_run"]["at"]


def test_history_and_logs_json_put_the_restart_in_an_agent_field(project: Project) -> None:
    interrupt_a_bake(project)

    shown = project.cli("history", "--env", "dev", "--json")
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == ""  # the facts are in the JSON, not beside it
    data = json.loads(shown.stdout)
    assert data["environment"] == "dev"
    assert all(d["outcome"] != "in_progress" for d in data["deployments"])
    agent = data["agent"]
    assert agent["started"] is True and agent["previous"]["ended"] == "crashed"
    assert [(i["deployment"], i["version"]) for i in agent["interrupted"]] == [(2, "v2")]

    # The agent runs now: nothing to say the next time.
    code, again = project.json("history", "--env", "dev")
    assert code == 0 and "agent" not in again

    kill_agent(project)
    shown = project.cli("logs", "web", "--env", "dev", "--json")
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == ""
    first, *lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert first["agent"]["started"] is True
    assert first["agent"]["previous"]["ended"] == "crashed"
    assert lines and all("agent" not in line and "line" in line for line in lines)


def test_a_clean_stop_is_told_apart_from_a_crash(project: Project) -> None:
    project.configure()
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    stop = project.cli("agent", "stop", "--keep-running")
    assert stop.returncode == 0, stop.stderr
    code, stopped = project.json("agent", "status")
    assert code == 1 and stopped["last_run"]["ended"] == "stopped"

    shown = project.cli("status", "--env", "dev")
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.startswith("the agent was not running (stopped at "), shown.stderr
    assert "interrupted" not in shown.stderr
    assert "v1" in shown.stdout
    agent = project.cli("agent", "status")
    assert agent.returncode == 0
    assert "previous run: a clean stop at " in agent.stdout


def test_an_unknown_environment_starts_no_agent(project: Project) -> None:
    project.configure()
    for command in (["status"], ["history"], ["logs", "web"]):
        shown = project.cli(*command, "--env", "nope")
        assert shown.returncode == 2, shown
        assert "unknown environment 'nope'" in shown.stderr
    assert project.pid("agent") is None
