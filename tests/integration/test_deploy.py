"""End to end through the CLI, the agent, the proxy and real app processes."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import PID, Project, alive, proc, wait_for
from conveyor.loadgen import LoadGenerator
from conveyor.runtimes.local import free_port

# The whole product on both databases: SQLite, then PostgreSQL (docs/internals.md, Tests).
pytestmark = pytest.mark.both_databases


def test_first_deploy_then_blue_green_under_load_then_rollback_to_standby(
    project: Project,
) -> None:
    project.configure()
    project.release("v1")
    code, out = project.deploy("v1")
    assert code == 0, out
    assert out["outcome"] == "succeeded" and out["version"] == "v1"
    assert project.get() == (200, "hello from v1\n", "v1")

    project.release("v2")
    load = LoadGenerator("127.0.0.1", project.port, connections=8, max_seconds=60).start()
    wait_for(lambda: load.snapshot()[0] > 50, what="traffic before the switch")
    code, out = project.deploy("v2")
    assert code == 0, out
    wait_for(lambda: project.serving() == "v2", what="v2 serving")
    code, status = project.json("status", "--env", "dev")
    assert code == 0
    web = status["services"][0]
    assert web["active"]["version"] == "v2" and web["active"]["healthy"] is True
    assert web["standby"]["version"] == "v1" and web["standby"]["color"] != web["active"]["color"]
    assert web["url"] == f"http://127.0.0.1:{project.port}"

    code, out = project.json("rollback", "--env", "dev")
    assert code == 0, out
    assert out["version"] == "v1"
    wait_for(lambda: project.serving() == "v1", what="v1 serving again")
    # The load itself moves back to v1: count only what it got after the rollback.
    after_rollback = load.versions()["v1"]
    wait_for(lambda: load.versions()["v1"] > after_rollback + 50, what="load served by v1")
    result = load.stop()
    assert result.failed == 0, (result.statuses, result.error_samples)
    assert result.versions["v2"] > 0

    code, hist = project.history("dev")
    assert [(d["version"], d["kind"], d["outcome"]) for d in hist] == [
        ("v1", "rollback", "succeeded"),
        ("v2", "deploy", "rolled_back"),
        ("v1", "deploy", "succeeded"),
    ]
    states = [e["state"] for e in hist[1]["events"]]
    assert states.index("healthy") < states.index("switching") < states.index("switched")
    for d in hist:
        assert d["started_at"] <= d["finished_at"]


def test_a_release_that_never_gets_healthy_is_refused_and_the_old_one_keeps_serving(
    project: Project,
) -> None:
    project.configure(start_timeout="1500ms")
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    project.release("v2", healthy=False)
    code, out = project.deploy("v2")
    assert code == 1
    assert out["outcome"] == "failed"
    assert "web (green) was not healthy within 1.5s (last check: HTTP 503)" in out["reason"]
    assert "last output of web" in out["reason"]
    assert project.get()[2] == "v1"
    code, hist = project.history("dev")
    assert hist[0]["version"] == "v2" and hist[0]["outcome"] == "failed"
    assert "not healthy" in hist[0]["reason"]
    # The failed color is gone; the old one is still the only process.
    rows = project.db("SELECT color, role, version FROM instances")
    assert rows == [("blue", "active", "v1")]


def test_a_release_that_crashes_on_start_fails_with_its_output(project: Project) -> None:
    project.configure()
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    project.release("v2", crash_after=0.05)
    code, out = project.deploy("v2")
    assert code == 1
    assert "exited before it took traffic: exited with code 3" in out["reason"]
    assert project.get()[2] == "v1"


def test_a_second_deploy_to_the_same_environment_is_refused(project: Project) -> None:
    project.configure(start_timeout="60s")
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    # Never healthy: the first deployment stays in progress until it is aborted.
    project.release("stuck", healthy=False)
    project.release("v3")
    first: dict[str, object] = {}
    thread = threading.Thread(target=lambda: first.update(res=project.deploy("stuck")))
    thread.start()
    wait_for(
        lambda: project.db("SELECT 1 FROM deployments WHERE outcome = 'in_progress'"),
        what="the first deployment to start",
    )
    proc = project.cli("deploy", "v3", "--env", "dev")
    assert proc.returncode == 1
    assert "already in progress (deploy of stuck)" in proc.stderr
    assert project.cli("abort", "--env", "dev").returncode == 0
    thread.join(60)
    assert first["res"][0] == 1 and first["res"][1]["outcome"] == "aborted"  # type: ignore[index]
    assert project.get()[2] == "v1"
    assert project.db("SELECT version FROM deployments ORDER BY id") == [("v1",), ("stuck",)]


def test_bad_input_exits_2_and_changes_nothing(project: Project) -> None:
    project.configure()
    project.release("v1")
    proc = project.cli("deploy", "nope", "--env", "dev")
    assert proc.returncode == 2 and "unknown release 'nope'" in proc.stderr
    proc = project.cli("deploy", "v1", "--env", "prod")
    assert proc.returncode == 2 and "--env" in proc.stderr and "prod" in proc.stderr
    (project.dir / "conveyor.toml").write_text(
        (project.dir / "conveyor.toml")
        .read_text()
        .replace('interval = "100ms"', 'interval = "fast"')
    )
    proc = project.cli("deploy", "v1", "--env", "dev")
    assert proc.returncode == 2
    assert "conveyor.toml:" in proc.stderr and "services.web.health.interval" in proc.stderr
    assert project.db("SELECT count(*) FROM deployments") == [(0,)]
    proc = project.cli("release", "create", "--version", "v1")
    assert proc.returncode == 2


def test_standby_is_stopped_when_its_time_is_over(project: Project) -> None:
    project.configure(standby="1s")
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    blue_pid = proc(project.db(f"SELECT {PID} FROM instances WHERE color = 'blue'")[0][0])
    assert project.deploy("v2")[0] == 0
    wait_for(lambda: not alive(blue_pid), what="the standby to stop")
    wait_for(lambda: project.db("SELECT color, role FROM instances") == [("green", "active")])
    # No standby any more: rollback redeploys v1 blue/green.
    code, out = project.json("rollback", "--env", "dev")
    assert code == 0, out
    assert out["version"] == "v1"
    assert project.get()[2] == "v1"


def test_workers_swap_without_a_proxy(project: Project) -> None:
    project.configure(worker=True)
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    old = proc(project.db(f"SELECT {PID} FROM instances WHERE service = 'jobs'")[0][0])
    assert project.deploy("v2")[0] == 0
    wait_for(lambda: not alive(old), what="the old worker to stop")
    rows = project.db("SELECT service, role, version FROM instances ORDER BY service, role")
    assert rows == [("jobs", "active", "v2"), ("web", "active", "v2"), ("web", "standby", "v1")]
    log = project.cli("logs", "jobs", "--env", "dev")
    assert log.returncode == 0 and "v2" in log.stdout


def test_agent_kill_under_load_drops_nothing_and_the_next_agent_adopts_everything(
    project: Project,
) -> None:
    project.configure()
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    app_pid = project.db(f"SELECT {PID} FROM instances")[0][0]
    proxy_pid = project.pid("proxy")
    agent_pid = project.pid("agent")
    assert proxy_pid and agent_pid
    load = LoadGenerator("127.0.0.1", project.port, connections=8, max_seconds=60).start()
    wait_for(lambda: load.snapshot()[0] > 50, what="traffic")
    agent = proc(agent_pid)
    os.kill(agent_pid, signal.SIGKILL)
    wait_for(lambda: not alive(agent), what="the agent to die")
    before = load.snapshot()[0]
    wait_for(lambda: load.snapshot()[0] > before + 200, what="traffic without the agent")
    assert project.cli("agent", "start").returncode == 0
    assert project.pid("agent") != agent_pid
    assert project.pid("proxy") == proxy_pid  # adopted, not restarted
    assert project.db(f"SELECT {PID} FROM instances")[0][0] == app_pid
    code, status = project.json("status", "--env", "dev")
    assert code == 0
    assert status["services"][0]["active"]["healthy"] is True
    result = load.stop()
    assert result.failed == 0, (result.statuses, result.error_samples)

    # Now the proxy dies too: the next agent brings it back with the same version.
    os.kill(project.pid("agent") or 0, signal.SIGKILL)
    proxy = proc(proxy_pid)
    os.kill(proxy_pid, signal.SIGKILL)
    wait_for(lambda: not alive(proxy), what="the proxy to die")
    assert project.cli("agent", "start").returncode == 0
    new_proxy = project.pid("proxy")
    assert new_proxy and new_proxy != proxy_pid
    assert project.get() == (200, "hello from v1\n", "v1")


def test_agent_stop_stops_services_and_proxy_and_start_brings_them_back(
    project: Project,
) -> None:
    project.configure()
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    app = proc(project.db(f"SELECT {PID} FROM instances")[0][0])
    proxy = proc(project.pid("proxy") or 0)
    stop = project.cli("agent", "stop")
    assert stop.returncode == 2 and "--yes" in stop.stderr  # no confirmation without a terminal
    assert alive(app)
    assert project.cli("agent", "stop", "--yes").returncode == 0
    wait_for(lambda: not alive(app) and not alive(proxy), what="no orphans")
    assert project.cli("agent", "start").returncode == 0
    wait_for(lambda: project.serving() == "v1", what="v1 back after agent start")


def test_agent_stop_keep_running_leaves_traffic_flowing(project: Project) -> None:
    project.configure()
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    app = proc(project.db(f"SELECT {PID} FROM instances")[0][0])
    assert project.cli("agent", "stop", "--keep-running").returncode == 0
    assert alive(app)
    assert project.get()[2] == "v1"
    assert project.cli("agent", "status").returncode == 1


def test_metrics_endpoint_exposes_proxy_counters(project: Project) -> None:
    project.configure()
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    for _ in range(5):
        assert project.get()[0] == 200
    code, info = project.json("agent", "status")
    assert code == 0 and info["running"]
    host, port = info["admin"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    conn.close()
    line = next(ln for ln in body.splitlines() if ln.startswith("conveyor_proxy_requests_total{"))
    assert 'environment="dev",service="web",color="blue",version="v1"' in line
    assert int(line.rsplit(" ", 1)[1]) >= 5
    assert "conveyor_proxy_responses_total{" in body and 'code="2xx"' in body
    assert "conveyor_proxy_request_duration_seconds_bucket{" in body


def test_two_environments_run_side_by_side_and_may_not_share_a_port(project: Project) -> None:
    staging = free_port()
    project.configure(extra=f"[environments.staging.services.web]\nport = {staging}\n")
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1", env="dev")[0] == 0
    assert project.deploy("v2", env="staging")[0] == 0
    assert project.get()[2] == "v1"
    assert project.get(port=staging)[2] == "v2"
    code, status = project.json("status", "--env", "staging")
    assert code == 0
    assert status["services"][0]["url"] == f"http://127.0.0.1:{staging}"
    # A third environment that would take dev's public port is refused before anything starts.
    text = (project.dir / "conveyor.toml").read_text()
    (project.dir / "conveyor.toml").write_text(text + "[environments.qa]\n")
    proc = project.cli("deploy", "v2", "--env", "qa")
    assert proc.returncode == 2
    assert f"port {project.port} is already served by environment 'dev'" in proc.stderr
    assert project.db("SELECT count(*) FROM deployments WHERE environment = 'qa'") == [(0,)]


def test_metrics_need_the_bearer_token_when_one_is_configured(project: Project) -> None:
    (project.dir / "admin.token").write_text("s3cret-token\n")
    project.configure()
    text = (project.dir / "conveyor.toml").read_text()
    (project.dir / "conveyor.toml").write_text(
        text + '\n[agent]\nadmin_token_file = "admin.token"\n'
    )
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    _, info = project.json("agent", "status")
    host, port = info["admin"].removeprefix("http://").split(":")

    def scrape(headers: dict[str, str]) -> int:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/metrics", headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status

    assert scrape({}) == 401
    assert scrape({"Authorization": "Bearer wrong"}) == 401
    assert scrape({"Authorization": "Bearer s3cret-token"}) == 200
    assert "s3cret" not in (project.home / "logs" / "agent.log").read_text()


def test_logs_follow_the_service_across_a_deploy(project: Project) -> None:
    project.configure(worker=True)
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    logs = project.cli("logs", "web", "--env", "dev", "-n", "5")
    assert logs.returncode == 0 and "start web blue v1" in logs.stdout
    follow = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "logs", "jobs", "--env", "dev", "--follow", "-n", "0"],
        env=project.env,
        cwd=project.dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert follow.stdout is not None
        assert project.deploy("v2")[0] == 0
        deadline = time.monotonic() + 30
        seen = ""
        while "[green]" not in seen or "v2" not in seen:  # the worker's heartbeat, new color
            assert time.monotonic() < deadline, seen[-2000:]
            seen += follow.stdout.readline()
    finally:
        follow.terminate()
        follow.wait(10)
