"""Benchmark: zero-downtime cutovers under load, through each router, against the app direct.

For each router (`--router builtin|haproxy|both`, default both), a scratch project of the demo
app with `[router] kind = ...` is driven through the real CLI: 64 keep-alive connections (wrk when
it is installed, otherwise the built-in asyncio load generator) while 10 consecutive blue/green
deploys switch traffic. Then the same load goes straight to the app's own port for a while, with
no router and no cutover: the baseline of the same run. Prints requests per second, p99 latency
and failed requests (non-2xx + socket errors) per target, and the ratios to the direct baseline.
Target: 0 failed with either router.

    .venv/bin/python benchmarks/cutover.py [--router both] [--cutovers 10] [--connections 64]
                                           [--builtin]

Everything listens on 127.0.0.1; every load stops by itself (bounded in time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from conveyor.demo import CONFIG, ScratchProject
from conveyor.loadgen import LoadGenerator, percentile

# Fast health checks and a short drain: the benchmark measures the switch, not the boot.
BENCH_CONFIG = CONFIG.replace('start_timeout = "4s"', 'start_timeout = "20s"')
# wrk prints durations and latencies with these units; as milliseconds.
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class Figures:
    target: str
    requests: int
    seconds: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    switches: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors


def parse_wrk(text: str) -> dict[str, float]:
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)", text, re.MULTILINE)
    return {
        "requests": int(total.group(1)) if total else 0,
        "seconds": float(total.group(2)) * UNITS[total.group(3)] / 1000.0 if total else 0.0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0,
        "p99_ms": float(p99.group(1)) * UNITS[p99.group(2)] if p99 else float("nan"),
    }


class Load:
    """wrk (with its latency distribution) or the built-in generator, on one port, bounded."""

    def __init__(self, port: int, connections: int, budget: float, wrk: str | None) -> None:
        self.wrk = wrk
        self.started = time.monotonic()
        url = f"http://127.0.0.1:{port}/"
        if wrk:
            self.proc: subprocess.Popen[str] | None = subprocess.Popen(
                [wrk, "-t2", f"-c{connections}", f"-d{int(budget)}s", "--latency", url],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            self.gen: LoadGenerator | None = None
        else:
            self.proc = None
            self.gen = LoadGenerator(
                "127.0.0.1", port, connections=connections, max_seconds=budget
            ).start()

    def stop(self, target: str, switches: list[float]) -> Figures:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
            text, _ = self.proc.communicate(timeout=30)
            f = parse_wrk(text)
            return Figures(
                target,
                int(f["requests"]),
                f["seconds"],
                f["p99_ms"],
                int(f["non_2xx"]),
                int(f["socket_errors"]),
                switches,
            )
        assert self.gen is not None
        res = self.gen.stop()
        return Figures(
            target,
            res.requests,
            time.monotonic() - self.started,
            percentile(res.latencies, 99) * 1000.0 if res.latencies else float("nan"),
            res.non_2xx,
            res.errors,
            switches,
        )


def app_port(project: ScratchProject) -> int:
    """The port the live color of web listens on (from the state database)."""
    with closing(sqlite3.connect(project.dir / ".conveyor" / "state.db")) as db:
        rows = db.execute(
            "SELECT handle FROM instances WHERE service = 'web' AND role = 'active'"
        ).fetchall()
    return int(json.loads(rows[0][0])["endpoints"][0]["port"])


def through(router: str, args: argparse.Namespace, console: Console) -> tuple[Figures, Figures]:
    """10 cutovers under load through `router`; then the app direct, same load, same length."""
    wrk = None if args.builtin else shutil.which("wrk")
    config = BENCH_CONFIG.replace(
        "[environments.dev]", f'[router]\nkind = "{router}"\n\n[environments.dev]'
    )
    project = ScratchProject(console, config)
    ok = False
    try:
        project.release("v0")
        code, out = project.conveyor("deploy", "v0", "--env", "dev", "--json")
        assert code == 0, out
        budget = 30 + 15 * args.cutovers  # seconds: the load ends by itself
        load = Load(project.port, args.connections, budget, wrk)
        time.sleep(1.0)  # steady load before the first cutover
        switches: list[float] = []
        for i in range(1, args.cutovers + 1):
            version = f"v{i}"
            project.release(version)
            code, out = project.conveyor("deploy", version, "--env", "dev", "--json")
            if code != 0:
                raise RuntimeError(f"{router}: deploy {version} failed: {out.get('error')}")
            switches.append(float(out["switch_ms"]["web"]))
            console.print(f"{router}: cutover {i:2d}, {version} live, switch {switches[-1]:.2f} ms")
        time.sleep(1.0)
        routed = load.stop(f"via {router}, {args.cutovers} cutovers", switches)
        # The same load for as long, straight at the app that is live now: the baseline.
        direct = Load(app_port(project), args.connections, routed.seconds + 30, wrk)
        time.sleep(max(1.0, routed.seconds))
        base = direct.stop(f"app direct (beside {router})", [])
        ok = True
        return routed, base
    finally:
        project.close(keep=not ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", choices=["builtin", "haproxy", "both"], default="both")
    parser.add_argument("--cutovers", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--builtin", action="store_true", help="use the built-in load generator")
    args = parser.parse_args()
    console = Console(highlight=False, width=130)
    console.print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    routers = ["builtin", "haproxy"] if args.router == "both" else [args.router]
    results = [through(router, args, console) for router in routers]
    tool = "built-in generator" if args.builtin or not shutil.which("wrk") else "wrk"
    table = Table(title=f"cutover benchmark ({tool}, {args.connections} keep-alive connections)")
    for col in (
        "target",
        "req/s",
        "p99 ms",
        "failed",
        "req/s vs direct",
        "p99 vs direct",
        "switch p50/max ms",
    ):
        table.add_column(col)
    for routed, base in results:
        for f in (base, routed):
            sw = f"{percentile(f.switches, 50):.2f} / {max(f.switches):.2f}" if f.switches else ""
            table.add_row(
                f.target,
                f"{f.rate:,.0f}",
                f"{f.p99_ms:.2f}",
                f"{f.failed} of {f.requests:,}",
                f"{f.rate / base.rate:.2f}" if f is routed and base.rate else "",
                f"{f.p99_ms / base.p99_ms:.2f}" if f is routed and base.p99_ms else "",
                sw,
            )
    console.print(table)
    if len(results) == 2 and all(r.rate and r.p99_ms for r, _ in results):
        (b, _), (h, _) = results
        console.print(
            f"haproxy / builtin: req/s {h.rate / b.rate:.2f}, p99 {h.p99_ms / b.p99_ms:.2f}"
        )
    return 0 if all(r.failed == 0 for r, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
