"""A release that dies whole after it took traffic, end to end through the CLI, agent and proxy.

The agent learns of the death from the runtime when it happens (a pidfd) and switches back to the
standby at once; the history says when the release died and how long the switch took (the time
itself is a benchmark's business: benchmarks/rollback.py, `death_to_switch`).
"""

from __future__ import annotations

import os
import re
import signal
import threading
from typing import Any

import pytest

from conftest import PGID, Project, unavailable, wait_for
from conveyor.runtimes.local import pidfds_work

MOMENT = r"\d\d:\d\d:\d\d\.\d{3} UTC"


@pytest.fixture(autouse=True)
def _pidfds() -> None:
    if not pidfds_work():
        unavailable("this kernel has no pidfds (Linux < 5.3): deaths are found by polling")


def v1_live(project: Project, rollout: str) -> None:
    """v1 takes the traffic; v2 is released, ready to deploy."""
    project.configure(rollout=rollout)
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0


def kill_whole(project: Project, version: str) -> None:
    """The release dies whole: its process group, at once."""
    [(pgid,)] = project.db(f"SELECT {PGID} FROM instances WHERE version = '{version}'")
    os.killpg(int(pgid), signal.SIGKILL)


def history(project: Project) -> list[dict[str, Any]]:
    """The deployments of dev, newest first, with their events."""
    code, out = project.json("history", "--env", "dev")
    assert code == 0, out
    return out["deployments"]  # type: ignore[no-any-return]


def history_text(project: Project) -> str:
    """`conveyor history` as a wide terminal shows it (one line per deployment)."""
    project.env["COLUMNS"] = "300"
    try:
        return project.cli("history", "--env", "dev").stdout
    finally:
        del project.env["COLUMNS"]


def phase(project: Project) -> str:
    code, status = project.json("status", "--env", "dev")
    assert code == 0, status
    return str((status.get("deployment") or {}).get("phase", ""))


def test_a_release_that_dies_whole_during_the_bake_is_switched_back_with_the_time(
    project: Project,
) -> None:
    # Without traffic the bake's analysis is inconclusive: `wait` holds the deployment in the
    # bake until the test has killed the release (no race with a timer).
    v1_live(project, 'bake = "2s"\non_inconclusive = "wait"')
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(res=project.deploy("v2")), daemon=True)
    thread.start()
    wait_for(lambda: phase(project) == "baking", what="the bake")
    kill_whole(project, "v2")
    thread.join(240)
    code, out = box["res"]
    assert code == 1 and out["outcome"] == "rolled_back", out
    pattern = (
        rf"web \(green\) crashed: killed by SIGKILL at {MOMENT}; switched back to v1 in \d+ ms"
    )
    assert re.fullmatch(pattern, out["reason"]), out["reason"]
    assert out["death_to_switch_ms"]["web"] >= 0
    assert project.serving() == "v1"
    hist = history(project)
    assert hist[0]["reason"] == out["reason"]
    back = next(e for e in hist[0]["events"] if e["state"] == "switched_back")
    assert back["death_to_switch_ms"] == out["death_to_switch_ms"]
    assert "switched back to v1 in" in history_text(project)


def test_a_release_that_dies_whole_in_the_standby_window_is_switched_back_with_the_time(
    project: Project,
) -> None:
    v1_live(project, 'bake = "0s"')
    assert project.deploy("v2")[0] == 0
    kill_whole(project, "v2")
    wait_for(lambda: project.serving() == "v1", what="the switch back")
    wait_for(
        lambda: history(project)[0]["kind"] == "rollback",
        what="the rollback in the history",
    )
    hist = history(project)
    rollback, rolled_back = hist[0], hist[1]
    assert (rollback["outcome"], rolled_back["outcome"]) == ("succeeded", "rolled_back")
    pattern = (
        r"automatic rollback: web v2 \(green\) exited during the standby window "
        rf"\(killed by SIGKILL at {MOMENT}\); switched back to v1 in \d+ ms"
    )
    assert re.fullmatch(pattern, rollback["reason"]), rollback["reason"]
    switched = next(e for e in rollback["events"] if e["state"] == "switched")
    assert switched["death_to_switch_ms"] >= 0
    assert "switched back to v1 in" in history_text(project)
