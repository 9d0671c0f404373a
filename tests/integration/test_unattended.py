"""Every deploy ends by itself: a blue/green deploy nobody uses goes live "unverified" and is
measured through the standby window; a canary nobody uses is aborted at its progress deadline.
End to end through the CLI, against real processes and the real proxy."""

from __future__ import annotations

from conftest import Project, switched_back_by_itself
from conveyor.loadgen import LoadGenerator

ANALYSIS = """
[[rollout.analysis]]
metric = "error_rate"
max = 0.01
interval = "200ms"
window = "2s"
min_requests = 20
failure_limit = 2
"""


def test_bluegreen_with_no_traffic_ends_unverified_then_the_standby_window_catches_errors(
    project: Project,
) -> None:
    project.configure(rollout='bake = "1s"' + ANALYSIS)  # on_inconclusive unset: the default
    project.release("v1")
    project.release("v2", error_rate=0.2)
    assert project.deploy("v1")[0] == 0
    proc = project.cli("deploy", "v2", "--env", "dev")  # nobody sends a request
    assert proc.returncode == 0, proc.stderr
    assert "v2 is live in dev" in proc.stdout
    assert "warning: live, unverified: error_rate: " in " ".join(proc.stdout.split())
    _, hist = project.history("dev")
    assert (hist[0]["version"], hist[0]["outcome"]) == ("v2", "succeeded")
    assert hist[0]["reason"].startswith("live, unverified: error_rate: ")
    assert project.serving() == "v2"

    # Users arrive: the analysis, still running while v1 waits on standby, switches back.
    gen = LoadGenerator("127.0.0.1", project.port, connections=2, max_seconds=60).start()
    try:
        hist = switched_back_by_itself(project)
    finally:
        gen.stop()
    assert "analysis failed during the standby window: error_rate" in hist[0]["reason"]
    assert any(
        e["state"] == "measurement" and "standby window" in e["reason"] for e in hist[1]["events"]
    )


def test_a_canary_nobody_uses_is_aborted_at_its_progress_deadline(project: Project) -> None:
    project.configure(
        rollout='strategy = "canary"\nbake = "0s"\nprogress_deadline = "2s"\n'
        'steps = [{ weight = 30, pause = "500ms" }, { weight = 100 }]' + ANALYSIS
    )
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    proc = project.cli("deploy", "v2", "--env", "dev")
    assert proc.returncode == 1, proc.stderr
    # Said once, with the way on; then the deadline ends it with all traffic back on v1.
    said = [line for line in proc.stdout.splitlines() if "] waiting for traffic: " in line]
    assert len(said) == 1, proc.stdout
    assert said[0].endswith("send traffic, or run `conveyor promote --env dev` to accept")
    _, hist = project.history("dev")
    assert hist[0]["outcome"] == "aborted"
    assert hist[0]["reason"].startswith("aborted: progress deadline (2s) passed while waiting for")
    assert project.serving() == "v1"
    assert project.db("SELECT version, role FROM instances") == [("v1", "active")]
