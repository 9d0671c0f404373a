"""`conveyor lock`, `unlock`, `locks` and `deploy --wait`, through the real CLI and agent."""

from __future__ import annotations

import threading

import pytest

from conftest import Project, wait_for

pytestmark = pytest.mark.both_databases


def test_a_manual_lock_refuses_deploys_until_unlocked(project: Project) -> None:
    project.configure()
    project.env["CONVEYOR_USER"] = "alice"
    project.release("v1")
    proc = project.cli("lock", "--env", "dev")
    assert proc.returncode == 2 and "--reason is required" in proc.stderr
    proc = project.cli("lock", "--env", "dev", "--reason", "db maintenance")
    assert proc.returncode == 0, proc.stderr
    assert "dev is locked by alice: db maintenance" in proc.stdout

    code, shown = project.json("locks")
    assert code == 0
    [held] = shown["locks"]
    assert (held["environment"], held["holder"], held["kind"], held["what"]) == (
        "dev",
        "alice",
        "manual",
        "db maintenance",
    )
    assert held["expires_at"] is None and held["expired"] is False

    project.env["CONVEYOR_USER"] = "bob"
    code, out = project.deploy("v1")
    assert code == 1
    assert "dev is locked by alice since" in out["error"] and "db maintenance" in out["error"]
    assert out["lock"]["holder"] == "alice"
    proc = project.cli("lock", "--env", "dev", "--reason", "mine now")
    assert proc.returncode == 1 and "locked by alice" in proc.stderr
    proc = project.cli("deploy", "v1", "--env", "dev", "--wait", "1s")
    assert proc.returncode == 1
    assert "gave up after waiting 1s" in proc.stderr and "locked by alice" in proc.stderr
    assert project.db("SELECT COUNT(*) FROM deployments") == [(0,)]

    proc = project.cli("unlock", "--env", "dev")
    assert proc.returncode == 0 and "unlocked dev (held by alice: db maintenance)" in proc.stdout
    proc = project.cli("unlock", "--env", "dev")
    assert proc.returncode == 0 and "dev was not locked" in proc.stdout
    assert project.json("locks") == (0, {"exit": 0, "locks": []})
    assert project.deploy("v1")[0] == 0


def test_deploy_waits_for_the_lock_and_says_so(project: Project) -> None:
    project.configure()
    project.env["CONVEYOR_USER"] = "alice"
    project.release("v1")
    assert project.cli("lock", "--env", "dev", "--reason", "hold on").returncode == 0
    waiting = project.spawn("deploy", "v1", "--env", "dev", "--wait", "3m")
    lines: list[str] = []
    assert waiting.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(waiting.stderr or []), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("waiting for dev" in line for line in lines), what="the wait")
        assert any("held by alice" in line and "hold on" in line for line in lines), lines
        assert waiting.poll() is None
        assert project.cli("unlock", "--env", "dev").returncode == 0
        waiting.wait(timeout=240)  # stderr is the reader's alone (no communicate())
    finally:
        if waiting.poll() is None:
            waiting.kill()
    reader.join(10)
    assert waiting.stdout is not None
    out = waiting.stdout.read()
    assert waiting.returncode == 0, lines
    assert any("dev is free after" in line for line in lines), lines
    assert "v1 is live in dev" in out


def test_a_running_deploy_is_unlocked_only_by_force(project: Project) -> None:
    project.configure(start_timeout="60s")
    project.release("v1")
    project.release("stuck", healthy=False)
    assert project.deploy("v1")[0] == 0
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(res=project.deploy("stuck")))
    thread.start()
    try:
        wait_for(lambda: project.json("locks")[1]["locks"], what="the deploy's lock")
        [held] = project.json("locks")[1]["locks"]
        assert held["kind"] == "operation" and held["what"] == "deploy of stuck"
        assert held["expires_at"] is not None and held["expired"] is False
        proc = project.cli("unlock", "--env", "dev")
        assert proc.returncode == 1 and "--force" in proc.stderr
        proc = project.cli("unlock", "--env", "dev", "--force")
        assert proc.returncode == 2 and "needs --yes" in proc.stderr
        proc = project.cli("unlock", "--env", "dev", "--force", "--yes")
        assert proc.returncode == 0 and "broke the lock of dev" in proc.stdout
        assert project.json("locks")[1]["locks"] == []
    finally:
        project.cli("abort", "--env", "dev")
        thread.join(60)
    assert box["res"][0] == 1  # type: ignore[index]
