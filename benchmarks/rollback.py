"""Benchmark: how fast a bad release is taken out of traffic, and how many users saw it.

Under a steady load of about 200 requests per second through conveyor's proxy, with the default
analysis (error_rate above 1% with at least 50 requests, measured every second over 10 seconds,
two failures in a row), this deploys:

1. blue/green, a release that answers 500 on 5% of requests;
2. canary with a 10% first step, the same bad release;
3. blue/green, a release that is healthy but 300 ms slower, caught by a latency_p99_ms check.

For each it prints the time from the first request on the bad release to traffic fully back on
the old one, and the failed responses users saw. Target: back within 5 seconds of the switch.

Then (`death_to_switch`) a release that dies whole, its process group SIGKILLed, during the bake
and during the standby window, under 16 keep-alive connections: the agent's own measure from the
death (as the runtime saw it, through a pidfd) to the router's answer, as the history records
it. Target: the switch back starts within 100 ms of the death.

Then the agent's recovery (issue 7): v2 deployed and baking, the agent killed with `kill -9`,
and `conveyor status` run at once. It starts the agent, whose recovery settles the interrupted
deployment before status answers: the time from the kill to that answer, and the failed
responses under the same load meanwhile.

    .venv/bin/python benchmarks/rollback.py [--rate 200] [--crash-only | --recovery-only]

Everything listens on 127.0.0.1; the load is bounded in time and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from conveyor.demo import ScratchProject
from conveyor.loadgen import LoadGenerator, percentile

BASE = """\
[app]
name = "bench"

[services.web]
command = "{python} app.py --port {{port}}"
port = {port}

[services.web.health]
interval = "200ms"
start_timeout = "20s"

[rollout]
standby = "10m"
drain_timeout = "5s"
"""

CANARY = """strategy = "canary"
steps = [{{ weight = 10, pause = "1m" }}, {{ weight = 100 }}]
"""

LATENCY = """[[rollout.analysis]]
metric = "error_rate"
max = 0.01

[[rollout.analysis]]
metric = "latency_p99_ms"
max = 200
"""


def event_times(project: ScratchProject, deployment: int) -> dict[str, float]:
    code, history = project.conveyor("history", "--env", "dev", "--limit", "5", "--json")
    assert code == 0
    for dep in history["deployments"]:
        if dep["id"] == deployment:
            times: dict[str, float] = {}
            for e in dep["events"]:
                times.setdefault(e["state"], datetime.fromisoformat(e["at"]).timestamp())
            return times
    raise KeyError(deployment)


def scenario(
    console: Console, name: str, rollout: str, bad: dict[str, Any], rate: float
) -> dict[str, Any]:
    # The [[rollout.analysis]] tables must come after the [rollout] keys.
    keys, _, tables = rollout.partition("[[")
    config = BASE.replace('drain_timeout = "5s"\n', 'drain_timeout = "5s"\n' + keys)
    if tables:
        config += "\n[[" + tables
    project = ScratchProject(console, config)
    try:
        project.release("v1")
        project.release("v2", **bad)
        code, out = project.conveyor("deploy", "v1", "--env", "dev", "--json")
        assert code == 0, out
        load = LoadGenerator("127.0.0.1", project.port, connections=8, rate=rate, max_seconds=120)
        load.start()
        time.sleep(2.0)  # steady state before the deploy
        before_requests, before_failed = load.snapshot()
        code, out = project.conveyor("deploy", "v2", "--env", "dev", "--json")
        time.sleep(1.0)
        after_requests, after_failed = load.snapshot()
        result = load.stop()
        times = event_times(project, out["deployment"])
        exposed = times.get("switched", times.get("step"))
        back = times.get("switched_back")
        return {
            "scenario": name,
            "outcome": out.get("outcome"),
            "reason": str(out.get("reason", "")).splitlines()[0],
            "seconds": (back - exposed) if back and exposed else None,
            "failed": after_failed - before_failed,
            "requests": after_requests - before_requests,
            "rate": result.requests / result.duration if result.duration else 0.0,
            "p99_ms": percentile(result.latencies, 99) * 1000,
        }
    finally:
        project.close()


def latest(project: ScratchProject) -> dict[str, Any]:
    """The newest deployment of dev, with its events."""
    _, history = project.conveyor("history", "--env", "dev", "--limit", "1", "--json")
    rows = history.get("deployments", [])
    return dict(rows[0]) if rows else {}


def death_to_switch(console: Console, where: str, rate: float) -> dict[str, Any]:
    """v2 dies whole during the bake or the standby window: what the history says it cost."""
    bake = 'bake = "60s"\n' if where == "bake" else 'bake = "0s"\n'
    config = BASE.replace('drain_timeout = "5s"\n', 'drain_timeout = "5s"\n' + bake)
    project = ScratchProject(console, config)
    try:
        project.release("v1")
        project.release("v2")
        code, out = project.conveyor("deploy", "v1", "--env", "dev", "--json")
        assert code == 0, out
        load = LoadGenerator("127.0.0.1", project.port, connections=16, rate=rate, max_seconds=120)
        load.start()
        time.sleep(1.0)  # steady state before the deploy
        deploy = threading.Thread(
            target=project.conveyor, args=("deploy", "v2", "--env", "dev", "--json")
        )
        deploy.start()
        if where == "bake":
            while latest(project).get("events", [{}])[-1].get("state") != "baking":
                time.sleep(0.05)
        else:
            deploy.join()
        _, status = project.conveyor("status", "--env", "dev", "--json")
        pid = status["services"][0]["active"]["pid"]
        before_requests, before_failed = load.snapshot()
        os.killpg(pid, signal.SIGKILL)  # the app leads its own process group: all of it dies
        deploy.join()
        event = "switched_back" if where == "bake" else "switched"
        while not any(e["state"] == event for e in latest(project).get("events", [])):
            time.sleep(0.05)
        time.sleep(1.0)  # what users saw after the switch counts too
        after_requests, after_failed = load.snapshot()
        load.stop()
        row = latest(project)
        ms = next(e for e in row["events"] if e["state"] == event).get("death_to_switch_ms")
        return {
            "where": where,
            "ms": max(ms.values()) if isinstance(ms, dict) else ms,
            "failed": after_failed - before_failed,
            "requests": after_requests - before_requests,
            "reason": row["reason"],
        }
    finally:
        project.close()


def crash_table(console: Console, rate: float) -> bool:
    rows = [death_to_switch(console, where, rate) for where in ("bake", "standby window")]
    table = Table("dies whole during", "death → switch", "failed responses", "requests", box=None)
    for row in rows:
        ms = f"{row['ms']:.0f} ms" if row["ms"] is not None else "-"
        table.add_row(row["where"], ms, str(row["failed"]), str(row["requests"]))
    console.print(table)
    for row in rows:
        console.print(f"{row['where']}: {row['reason']}")
    return all(row["ms"] is not None and row["ms"] < 100 for row in rows)


BAKING = """on_inconclusive = "pass"
bake = "5m"
"""


def status(project: ScratchProject) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "status", "--env", "dev", "--json"],
        env=project.env,
        cwd=project.dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    data: dict[str, Any] = json.loads(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"status failed: {data}")
    return data


def recovery(console: Console, rate: float) -> dict[str, Any]:
    """Seconds from `kill -9` of the agent during a bake to `conveyor status` answering with the
    deployment settled (the command starts the agent; recovery runs before it answers)."""
    config = BASE.replace('drain_timeout = "5s"\n', 'drain_timeout = "5s"\n' + BAKING)
    project = ScratchProject(console, config)
    deploy: subprocess.Popen[bytes] | None = None
    try:
        project.release("v1")
        project.release("v2")
        code, out = project.conveyor("deploy", "v1", "--env", "dev", "--json")
        assert code == 0, out
        load = LoadGenerator("127.0.0.1", project.port, connections=8, rate=rate, max_seconds=120)
        load.start()
        deploy = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "deploy", "v2", "--env", "dev", "--json"],
            env=project.env,
            cwd=project.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while (status(project).get("deployment") or {}).get("phase") != "baking":
            if time.monotonic() > deadline:
                raise RuntimeError("v2 never reached its bake")
            time.sleep(0.2)
        time.sleep(1.0)  # steady load on v2
        before_requests, before_failed = load.snapshot()
        pid = int((project.dir / ".conveyor" / "agent.pid").read_text())
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        answer = status(project)
        answered = time.monotonic()
        time.sleep(1.0)
        after_requests, after_failed = load.snapshot()
        load.stop()
        interrupted = (answer.get("agent") or {}).get("interrupted") or [{}]
        return {
            "seconds": answered - killed,
            "outcome": interrupted[0].get("outcome"),
            "in_progress": answer.get("deployment") is not None,
            "serving": [s["active"]["version"] for s in answer["services"] if s["active"]],
            "failed": after_failed - before_failed,
            "requests": after_requests - before_requests,
        }
    finally:
        if deploy is not None:
            deploy.kill()
            deploy.wait(timeout=60)
        project.close()


def recovery_line(console: Console, rate: float) -> bool:
    back = recovery(console, rate)
    console.print(
        f"\nkill -9 of the agent during a bake → `conveyor status` answered with the deployment "
        f"settled after {back['seconds']:.2f} s (outcome {back['outcome']}, still in progress: "
        f"{back['in_progress']}, serving {', '.join(back['serving'])}); failed responses "
        f"{back['failed']} of {back['requests']}"
    )
    return not back["in_progress"] and back["outcome"] != "in_progress"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument(
        "--crash-only", action="store_true", help="only the releases that die whole"
    )
    parser.add_argument("--recovery-only", action="store_true", help="only the kill -9 case")
    args = parser.parse_args()
    console = Console(highlight=False)
    if args.recovery_only:
        return 0 if recovery_line(console, args.rate) else 1
    crashes_ok = crash_table(console, args.rate)
    if args.crash_only:
        return 0 if crashes_ok else 1
    rows = [
        scenario(console, "blue/green, 5% errors", "", {"error_rate": 0.05}, args.rate),
        scenario(console, "canary 10%, 5% errors", CANARY, {"error_rate": 0.05}, args.rate),
        scenario(console, "blue/green, +300 ms", LATENCY, {"latency_ms": 300}, args.rate),
    ]
    table = Table(
        "scenario",
        "outcome",
        "switch → back on old",
        "failed responses",
        "requests",
        "load",
        box=None,
    )
    for row in rows:
        seconds = f"{row['seconds']:.2f} s" if row["seconds"] is not None else "-"
        table.add_row(
            row["scenario"],
            row["outcome"],
            seconds,
            str(row["failed"]),
            str(row["requests"]),
            f"{row['rate']:.0f} req/s",
        )
    console.print(table)
    for row in rows:
        console.print(f"{row['scenario']}: {row['reason']}")
    ok = all(
        r["outcome"] == "rolled_back" and r["seconds"] is not None and r["seconds"] < 5
        for r in rows
    )
    recovered = recovery_line(console, args.rate)
    return 0 if ok and crashes_ok and recovered else 1


if __name__ == "__main__":
    sys.exit(main())
