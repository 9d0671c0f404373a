"""A release that dies whole after it took traffic, and one that crash-loops, end to end through
the CLI, agent and proxy.

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
from test_rollout_e2e import receiver  # noqa: F401 - a fixture, used by name

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


# --- a crash loop --------------------------------------------------------------------------------


def test_a_crash_loop_backs_off_and_is_shown_recorded_and_sent(
    project: Project,
    receiver: tuple[int, list[dict[str, Any]]],  # noqa: F811 - the fixture imported above
) -> None:
    port, bodies = receiver
    project.configure(rollout='bake = "0s"')
    with (project.dir / "conveyor.toml").open("a") as f:
        f.write(
            f'\n[[notifications]]\nurl = "http://127.0.0.1:{port}/hook"\nevents = ["crash_loop"]\n'
        )
    # Healthy at first, then it exits with code 3, 2.5 s after each start: a first deployment
    # with nothing to switch back to, restarted after 1 s, 2 s, 4 s.
    project.release("v1", crash_after=2.5)
    code, out = project.deploy("v1")
    assert code == 0, out

    def looping() -> dict[str, Any] | None:
        code, status = project.json("status", "--env", "dev")
        assert code == 0, status
        restarts = (status["services"][0]["active"] or {}).get("restarts") or {}
        return restarts if restarts.get("crash_looping") else None

    restarts = wait_for(looping, what="the crash loop")
    assert restarts["backoff"][:3] == [1.0, 2.0, 4.0]
    assert restarts["restarts"] >= 3 and restarts["last_exit"]["detail"] == "exited with code 3"
    text = project.cli("status", "--env", "dev").stdout
    assert re.search(
        r"web v1 \(blue\): crash-looping — \d+ restarts in \w+, last: exited with code 3 at "
        r"\d\d:\d\d:\d\d",
        " ".join(text.split()),
    ), text
    hist = history(project)
    loop = next(d for d in hist if d["kind"] == "crash_loop")
    pattern = (
        rf"web v1 \(blue\): crash-looping — 3 restarts in \d+s, last: exited with code 3 at "
        rf"{MOMENT}; restarted after 1s, 2s, 4s"
    )
    assert loop["outcome"] == "failed" and re.fullmatch(pattern, loop["reason"]), loop
    assert hist[-1]["outcome"] == "succeeded"  # the deployment itself is never rewritten
    assert "crash_loop" in history_text(project)
    wait_for(lambda: bodies, what="the crash_loop webhook")
    assert [(b["event"], b["version"], b["deployment"]) for b in bodies] == [
        ("crash_loop", "v1", loop["id"])
    ]
    assert bodies[0]["reason"] == loop["reason"]
