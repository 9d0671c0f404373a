"""Deployments through the real CLI and agent with `[router] kind = "haproxy"`: HAProxy carries
the traffic, its runtime API switches it, its counters feed the analysis."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_rollout_e2e import ERROR_RATE, background_deploy, deployment, fresh_requests

from conftest import Project, alive, proc, temp_project, unavailable, wait_for
from conveyor.loadgen import LoadGenerator

HAPROXY = '\n[router]\nkind = "haproxy"\n'


@pytest.fixture
def project() -> Iterator[Project]:
    if shutil.which("/usr/sbin/haproxy") is None:
        unavailable("HAProxy is not installed (/usr/sbin/haproxy; Debian package haproxy)")
    with temp_project() as proj:
        try:
            yield proj
        finally:
            # `agent stop` (in cleanup) stops them; whatever a failed test left is killed here,
            # but only a process whose command line names this project's files.
            for pid in haproxy_pids(proj):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def haproxy_pids(project: Project) -> list[int]:
    pids = []
    for pidfile in (project.home / "haproxy").glob("*/haproxy.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().split()[0])
            if str(project.dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return pids


def load(project: Project) -> LoadGenerator:
    return LoadGenerator("127.0.0.1", project.port, connections=8, max_seconds=90).start()


def test_blue_green_through_haproxy_fails_no_request_and_survives_an_agent_kill(
    project: Project,
) -> None:
    project.configure(rollout='bake = "0s"' + HAPROXY)
    project.release("v1")
    project.release("v2")
    code, out = project.deploy("v1")
    assert code == 0, out
    assert project.get() == (200, "hello from v1\n", "v1")
    # HAProxy serves the port, not the built-in proxy.
    assert project.pid("proxy") is None
    [pid] = haproxy_pids(project)
    assert (
        f"bind 127.0.0.1:{project.port}"
        in next((project.home / "haproxy").glob("*/haproxy.cfg")).read_text()
    )

    gen = load(project)
    try:
        wait_for(lambda: gen.snapshot()[0] > 100, what="traffic before the switch")
        code, out = project.deploy("v2")
        assert code == 0, out
        seen = gen.versions()["v2"]
        wait_for(lambda: gen.versions()["v2"] > seen + 100, what="the load on v2")
        code, out = project.json("rollback", "--env", "dev")
        assert code == 0, out
        seen = gen.versions()["v1"]
        wait_for(lambda: gen.versions()["v1"] > seen + 100, what="the load back on v1")
    finally:
        result = gen.stop()
    assert result.failed == 0, (result.statuses, result.error_samples)
    assert haproxy_pids(project) == [pid]  # every switch went through the runtime API

    # The agent dies; HAProxy goes on serving; the next command's agent adopts it.
    agent = proc(project.pid("agent") or 0)
    os.kill(agent[0], signal.SIGKILL)
    wait_for(lambda: not alive(agent), what="the agent to die")
    assert project.serving() == "v1"
    code, status = project.json("status", "--env", "dev")
    assert code == 0, status
    assert haproxy_pids(project) == [pid]
    code, out = project.deploy("v2")
    assert code == 0, out
    assert project.serving() == "v2"

    assert project.cli("agent", "stop", "--yes").returncode == 0
    wait_for(lambda: not haproxy_pids(project), what="HAProxy to stop with the agent")


def test_error_rate_read_from_haproxys_counters_rolls_back(project: Project) -> None:
    project.configure(rollout=ERROR_RATE + HAPROXY)
    project.release("v1")
    project.release("v2", error_rate=0.2)
    assert project.deploy("v1")[0] == 0
    gen = LoadGenerator("127.0.0.1", project.port, connections=4, max_seconds=90).start()
    try:
        wait_for(lambda: gen.snapshot()[0] > 50, what="traffic")
        code, out = project.deploy("v2")
    finally:
        gen.stop()
    assert code == 1, out
    assert out["outcome"] == "rolled_back"
    assert out["reason"].startswith("analysis failed: error_rate: ")
    failed = [m for m in out["measurements"] if m["verdict"] == "fail"]
    assert failed and failed[0]["value"] > 0.01
    assert project.serving() == "v1"


CANARY = """strategy = "canary"
bake = "0s"
steps = [{ weight = 30, pause = "manual" }, { weight = 100 }]
"""


def test_a_canary_through_haproxy_splits_by_weight_and_promotes(project: Project) -> None:
    project.configure(rollout=CANARY + HAPROXY)
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    thread, box = background_deploy(project, "v2")
    wait_for(
        lambda: (d := deployment(project)) and "manual pause" in d["waiting"] and d,
        what="the manual pause at 30%",
    )
    seen = fresh_requests(project.port, 400)
    assert 80 <= seen.get("v2", 0) <= 160, seen  # 30% ± 10 points
    assert project.cli("promote", "--env", "dev").returncode == 0
    thread.join(240)
    assert box["res"][0] == 0, box
    assert fresh_requests(project.port, 50) == {"v2": 50}


def test_latency_p99_with_haproxy_is_refused_before_anything_starts(project: Project) -> None:
    project.configure(
        rollout='bake = "1s"\n[[rollout.analysis]]\nmetric = "latency_p99_ms"\nmax = 100\n'
        + HAPROXY
    )
    (project.dir / "demo.json").write_text('{"version": "v1"}')
    res = project.cli("release", "create", "--version", "v1")
    assert res.returncode == 2, res.stderr
    assert "conveyor.toml:21: rollout.analysis.0.metric: latency_p99_ms" in res.stderr
    assert "'haproxy' router cannot do" in res.stderr
    assert not haproxy_pids(project)
