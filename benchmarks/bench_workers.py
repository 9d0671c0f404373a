"""The workers part of benchmarks/proxy.py (issue 15): run by it after the one-core comparison.

* conveyor with N workers beside HAProxy with `nbthread N`, nothing pinned (both proxies, nginx
  and wrk share the machine's cores), wrk with N threads: req/s and CPU per request.
* Route switch latency: `set_route` round trips (the agent's call: a new control connection,
  the keeper, which writes the table to shared memory) while wrk loads the proxy and idle, beside
  `ping` (the keeper alone); p50 and p99.
* `kill -9` of one worker under wrk load: wrk's connect errors (refused) and read/write errors
  (requests in flight on the killed worker).
* `--reloads` reloads in a row (`reload_proxy`, the code of `conveyor proxy reload`) under 64
  keep-alive connections of wrk: every error wrk counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from proxy import (
    HAPROXY,
    LOCAL,
    WRK,
    Result,
    free_port,
    haproxy_config,
    process,
    set_conveyor_route,
    show,
    wait_port,
    wrk,
)


def _status(control: Path) -> dict[str, Any]:
    from conveyor.routers.builtin import ProxyClient

    return asyncio.run(ProxyClient(control).call({"op": "status"}))


def _errors(out: str) -> dict[str, int]:
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    found = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
        if m
        else {}
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    found["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    total = re.search(r"(\d+) requests in", out)
    found["requests"] = int(total.group(1)) if total else 0
    for key in ("connect", "read", "write", "timeout"):
        found.setdefault(key, 0)
    return found


def _wrk_background(port: int, connections: int, seconds: float, threads: int) -> Any:
    return subprocess.Popen(
        [
            WRK,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"http://{LOCAL}:{port}/",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def switch_latency(control: Path, port: int, backend: int, calls: int) -> tuple[float, float]:
    from conveyor.routers.base import Backend
    from conveyor.routers.builtin import ProxyClient

    async def measure() -> list[float]:
        client = ProxyClient(control)
        times = []
        for i in range(calls):
            weights = [
                Backend("blue", LOCAL, backend, 100 - i % 2),
                Backend("green", LOCAL, backend, i % 2),
            ]
            t0 = time.perf_counter()
            await client.set_route("bench/web", (LOCAL, port), weights)
            times.append(time.perf_counter() - t0)
        return sorted(times)

    times = asyncio.run(measure())
    return times[len(times) // 2], times[int(len(times) * 0.99) - 1]


def ping_latency(control: Path, calls: int) -> tuple[float, float]:
    """The floor under a switch: a control round trip that the keeper answers alone."""
    from conveyor.routers.builtin import ProxyClient

    async def measure() -> list[float]:
        client = ProxyClient(control)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await client.ping()
            times.append(time.perf_counter() - t0)
        return sorted(times)

    times = asyncio.run(measure())
    return times[len(times) // 2], times[int(len(times) * 0.99) - 1]


def workers_section(tmp: Path, nginx_port: int, args: argparse.Namespace) -> None:
    n = args.workers
    s = args.seconds
    c = args.connections
    control = tmp / "workers.sock"
    hp_port, cv_port = free_port(), free_port()
    print(f"\n{n} workers vs HAProxy nbthread {n}: nothing pinned, wrk -t{n} -c{c} -d{s:g}s")
    with (
        process(
            [HAPROXY, "-db", "-f", str(haproxy_config(tmp, hp_port, nginx_port, n))],
            tmp / "haproxy-n.out",
        ) as haproxy_proc,
        process(
            [
                sys.executable,
                "-m",
                "conveyor.proxy",
                "--control",
                str(control),
                "--pidfile",
                str(tmp / "workers.pid"),
                "--workers",
                str(n),
            ],
            tmp / "conveyor-n.out",
        ) as conveyor_proc,
    ):
        try:
            wait_port(hp_port)
            deadline = time.monotonic() + 10
            while not control.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            set_conveyor_route(control, cv_port, nginx_port)
            wait_port(cv_port)
            wrk(hp_port, c, 1, None, threads=n)
            wrk(cv_port, c, 1, None, threads=n)
            rounds: list[tuple[Result, Result]] = []
            for _ in range(args.rounds):
                rounds.append(
                    (
                        wrk(hp_port, c, s, None, haproxy_proc.pid, threads=n),
                        wrk(cv_port, c, s, None, conveyor_proc.pid, threads=n),
                    )
                )
            hp = sorted((r[0] for r in rounds), key=lambda r: r.rps)[len(rounds) // 2]
            cv = sorted((r[1] for r in rounds), key=lambda r: r.rps)[len(rounds) // 2]
            show(f"via haproxy nbthread {n}", hp)
            show(f"via conveyor {n} workers", cv)
            ratios = sorted(b.rps / a.rps for a, b in rounds)
            print("conveyor / haproxy req/s per round: " + ", ".join(f"{x:.2f}" for x in ratios))

            # Switch latency, under load and idle.
            load = _wrk_background(cv_port, c, 8, n)
            time.sleep(0.5)
            p50, p99 = switch_latency(control, cv_port, nginx_port, 300)
            ping50, ping99 = ping_latency(control, 300)
            load.communicate()
            idle50, idle99 = switch_latency(control, cv_port, nginx_port, 300)
            iping50, iping99 = ping_latency(control, 300)
            set_conveyor_route(control, cv_port, nginx_port)
            print(
                f"route switch with {n} workers (set_route: the keeper writes shared memory), 300 calls: "
                f"under load p50 {p50 * 1e3:.2f} ms p99 {p99 * 1e3:.2f} ms; "
                f"idle p50 {idle50 * 1e3:.2f} ms p99 {idle99 * 1e3:.2f} ms\n"
                f"  ping (the keeper alone): under load p50 {ping50 * 1e3:.2f} ms p99 "
                f"{ping99 * 1e3:.2f} ms; idle p50 {iping50 * 1e3:.2f} ms p99 {iping99 * 1e3:.2f} ms"
            )

            # kill -9 of one worker under load.
            victim = _status(control)["workers"][0]["pid"]
            load = _wrk_background(cv_port, c, 4, n)
            time.sleep(1.0)
            os.kill(victim, signal.SIGKILL)
            out, _ = load.communicate()
            errors = _errors(out)
            after = _status(control)["workers"]
            print(
                f"kill -9 of worker pid {victim} under wrk -c{c} (4 s): {errors['requests']:,} "
                f"requests, connect errors (refused) {errors['connect']}, read {errors['read']}, "
                f"write {errors['write']}, timeout {errors['timeout']}, non-2xx "
                f"{errors['non2xx']}; restarted: {[w['restarts'] for w in after]}"
            )

            # Reloads in a row under 64 keep-alive connections.
            from conveyor.routers.builtin import reload_proxy

            duration = int(3 + 1.0 * args.reloads)
            load = _wrk_background(cv_port, 64, duration, n)
            time.sleep(1.0)
            took: list[float] = []
            for _ in range(args.reloads):
                t0 = time.perf_counter()
                reload_proxy(
                    tmp,
                    control,
                    tmp / "workers.pid",
                    tmp / "conveyor-n.out",
                    workers=n,
                    drain_timeout=5.0,
                )
                took.append(time.perf_counter() - t0)
            out, _ = load.communicate()
            errors = _errors(out)
            failed = sum(errors[k] for k in ("connect", "read", "write", "timeout", "non2xx"))
            print(
                f"{args.reloads} reloads in a row under wrk -c64 ({duration:g} s): "
                f"{errors['requests']:,} requests, failed {failed} ({errors}); each reload "
                f"{min(took):.2f}-{max(took):.2f} s until the new keeper answered"
            )
        finally:
            with contextlib.suppress(Exception):
                from conveyor.routers.builtin import ProxyClient

                asyncio.run(ProxyClient(control).shutdown())
