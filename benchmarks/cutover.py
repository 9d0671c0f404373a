"""Benchmark: zero-downtime cutovers under load.

Drives 64 keep-alive connections through conveyor's proxy (wrk when it is installed, otherwise the
built-in asyncio load generator) while 10 consecutive blue/green deploys switch traffic, then prints
the total requests, non-2xx answers, socket errors and each switch's duration. Target: 0 failed.

    .venv/bin/python benchmarks/cutover.py [--cutovers 10] [--connections 64] [--builtin]

Everything listens on 127.0.0.1; the load stops by itself (bounded in time).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time

from rich.console import Console

from conveyor.demo import CONFIG, ScratchProject
from conveyor.loadgen import LoadGenerator, percentile

# Fast health checks and a short drain: the benchmark measures the switch, not the boot.
BENCH_CONFIG = CONFIG.replace('start_timeout = "4s"', 'start_timeout = "20s"')


def parse_wrk(text: str) -> dict[str, int]:
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cutovers", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--builtin", action="store_true", help="use the built-in load generator")
    args = parser.parse_args()
    console = Console(highlight=False)
    wrk = None if args.builtin else shutil.which("wrk")
    project = ScratchProject(console, BENCH_CONFIG)
    switches: list[float] = []
    deploy_seconds: list[float] = []
    ok = False
    try:
        project.release("v0")
        code, out = project.conveyor("deploy", "v0", "--env", "dev", "--json")
        assert code == 0, out
        url = f"http://127.0.0.1:{project.port}/"
        budget = 30 + 15 * args.cutovers  # seconds: the load ends by itself
        if wrk:
            load_proc = subprocess.Popen(
                [wrk, "-t2", f"-c{args.connections}", f"-d{budget}s", "--latency", url],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            gen = None
        else:
            load_proc = None
            gen = LoadGenerator(
                "127.0.0.1", project.port, connections=args.connections, max_seconds=budget
            ).start()
        time.sleep(1.0)  # steady load before the first cutover
        for i in range(1, args.cutovers + 1):
            version = f"v{i}"
            project.release(version)
            t0 = time.monotonic()
            code, out = project.conveyor("deploy", version, "--env", "dev", "--json")
            deploy_seconds.append(time.monotonic() - t0)
            if code != 0:
                console.print(f"[red]deploy {version} failed:[/] {out.get('error')}")
                return 1
            switches.append(float(out["switch_ms"]["web"]))
            console.print(
                f"cutover {i:2d}: {version} live, switch {switches[-1]:.2f} ms, "
                f"deploy {deploy_seconds[-1]:.2f} s"
            )
        time.sleep(1.0)
        if load_proc is not None:
            load_proc.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
            text, _ = load_proc.communicate(timeout=30)
            figures = parse_wrk(text)
            tool = "wrk"
        else:
            assert gen is not None
            res = gen.stop()
            figures = {
                "requests": res.requests,
                "non_2xx": res.non_2xx,
                "socket_errors": res.errors,
            }
            tool = "built-in generator"
        console.rule(f"cutover benchmark ({tool}, {args.connections} keep-alive connections)")
        console.print(f"total requests    {figures['requests']}")
        console.print(f"non-2xx           {figures['non_2xx']}")
        console.print(f"socket errors     {figures['socket_errors']}")
        console.print(
            "switch durations  " + ", ".join(f"{s:.2f}" for s in switches) + " ms"
            f"  (p50 {percentile(switches, 50):.2f} ms, max {max(switches):.2f} ms)"
        )
        console.print(f"deploy durations  p50 {percentile(deploy_seconds, 50):.2f} s")
        ok = figures["non_2xx"] == 0 and figures["socket_errors"] == 0
        return 0 if ok else 1
    finally:
        project.close(keep=not ok)  # a failed run leaves its logs for a look


if __name__ == "__main__":
    sys.exit(main())
