"""Benchmark: nginx direct vs through HAProxy vs through conveyor's proxy (a benchmark, not a test).

    .venv/bin/python benchmarks/proxy.py [--seconds 3] [--connections 64]

What it does, all on 127.0.0.1, everything cleaned up at the end:

* nginx (1 worker, keep-alive, `return 200` of a 13-byte body) is the backend.
* HAProxy (http mode, 1 thread, keep-alive and connection reuse to nginx) and conveyor's proxy
  (`python -m conveyor.proxy`, one route) sit in front of it.
* Load: wrk (1 thread, keep-alive). Each target gets a closed-loop run at `--connections` for
  its maximum req/s and its p50/p99 latency.
* "Half load": wrk2 (fixed request rate) is not available, so for each proxy the script reruns
  wrk with fewer connections (1, 2, 4, 8, 16), picks the run whose req/s is closest to half of
  that proxy's maximum, and compares its p99 with nginx direct at the same connection count:
  the difference is the p99 the proxy adds at about half of its maximum load. Those p99s are
  the median of three runs each (a single scheduler hiccup moves a 3-second p99).

CPU placement on this 2-core machine: nginx on core 0, the proxy under test on core 1 (alone),
wrk on core 0 beside nginx (nginx returning a constant costs little). For the direct runs wrk
runs on core 1. Both proxies get the same placement, so the ratio is fair; the absolute figures
are those of a machine where the load generator competes with the backend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOCAL = "127.0.0.1"
NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
WRK = "/usr/bin/wrk"
SERVER_CORE, PROXY_CORE, LOAD_CORE = 0, 1, 0
HALF_LOAD_CONNECTIONS = (1, 2, 4, 8, 16)


@dataclass
class Result:
    rps: float
    p50: float  # seconds
    p99: float
    connections: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((LOCAL, port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() else []


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def nginx_config(tmp: Path, port: int) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen {LOCAL}:{port};
        location / {{ default_type text/plain; return 200 "hello world!\\n"; }}
    }}
}}
"""
    )
    return conf


def haproxy_config(tmp: Path, port: int, backend: int) -> Path:
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        f"""
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend web
    bind {LOCAL}:{port}
    default_backend app
backend app
    server nginx {LOCAL}:{backend}
"""
    )
    return conf


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _duration(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(port: int, connections: int, seconds: float, core: int) -> Result:
    out = subprocess.run(
        [
            *pinned(core),
            WRK,
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            f"http://{LOCAL}:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _duration(re.search(r"^ +50% +(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _duration(re.search(r"^ +99% +(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if errors:
        print(f"  warning: {errors.group(0)}", file=sys.stderr)
    return Result(rps, p50, p99, connections)


def set_conveyor_route(control: Path, port: int, backend: int) -> None:
    from conveyor.routers.base import Backend
    from conveyor.routers.builtin import ProxyClient

    asyncio.run(
        ProxyClient(control).set_route(
            "bench/web", (LOCAL, port), [Backend("blue", LOCAL, backend, 100)]
        )
    )


def show(name: str, r: Result) -> None:
    print(
        f"{name:<22} {r.rps:>10,.0f} req/s   p50 {r.p50 * 1e3:7.3f} ms   "
        f"p99 {r.p99 * 1e3:7.3f} ms   ({r.connections} connections)"
    )


def half_load(
    port: int, max_rps: float, seconds: float, direct: dict[int, Result], nginx: int
) -> tuple[Result, Result]:
    runs = [wrk(port, c, seconds, LOAD_CORE) for c in HALF_LOAD_CONNECTIONS]
    best = min(runs, key=lambda r: abs(r.rps - max_rps / 2))
    # p99 over a few seconds is noisy (one scheduler hiccup moves it): median of three runs.
    proxied = _median([best, *(wrk(port, best.connections, seconds, LOAD_CORE) for _ in "ab")])
    if best.connections not in direct:
        direct[best.connections] = _median(
            [wrk(nginx, best.connections, seconds, PROXY_CORE) for _ in "abc"]
        )
    return proxied, direct[best.connections]


def _median(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.p99)[len(results) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    for binary in (NGINX, HAPROXY, WRK):
        if not Path(binary).exists():
            print(f"missing {binary} (apt-get install -y nginx-light haproxy wrk)", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="cvbench", dir="/tmp"))
    nginx_port, haproxy_port, conveyor_port = free_port(), free_port(), free_port()
    control = tmp / "proxy.sock"
    try:
        with (
            process(
                [*pinned(SERVER_CORE), NGINX, "-c", str(nginx_config(tmp, nginx_port))],
                tmp / "nginx.out",
            ),
            process(
                [
                    *pinned(PROXY_CORE),
                    HAPROXY,
                    "-db",
                    "-f",
                    str(haproxy_config(tmp, haproxy_port, nginx_port)),
                ],
                tmp / "haproxy.out",
            ),
            process(
                [
                    *pinned(PROXY_CORE),
                    sys.executable,
                    "-m",
                    "conveyor.proxy",
                    "--control",
                    str(control),
                    "--pidfile",
                    str(tmp / "proxy.pid"),
                ],
                tmp / "conveyor.out",
            ),
        ):
            wait_port(nginx_port)
            wait_port(haproxy_port)
            deadline = time.monotonic() + 10
            while not control.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            set_conveyor_route(control, conveyor_port, nginx_port)
            wait_port(conveyor_port)

            c, s = args.connections, args.seconds
            # Warm-up (connection pools, CPU caches), not reported.
            for port in (nginx_port, haproxy_port, conveyor_port):
                wrk(port, c, 1, LOAD_CORE)
            print(f"max load: wrk -t1 -c{c} -d{s:g}s, keep-alive, 13-byte body")
            direct = wrk(nginx_port, c, s, PROXY_CORE)
            haproxy = wrk(haproxy_port, c, s, LOAD_CORE)
            conveyor = wrk(conveyor_port, c, s, LOAD_CORE)
            show("nginx direct", direct)
            show("via haproxy", haproxy)
            show("via conveyor", conveyor)
            print(f"conveyor / haproxy req/s: {conveyor.rps / haproxy.rps:.2f}")

            print("\nhalf load (closest to half of each proxy's max req/s, by connection count):")
            directs: dict[int, Result] = {}
            summary = {}
            for name, port, top in (
                ("haproxy", haproxy_port, haproxy),
                ("conveyor", conveyor_port, conveyor),
            ):
                run, base = half_load(port, top.rps, s, directs, nginx_port)
                show(f"via {name}", run)
                show("  nginx direct", base)
                added = run.p99 - base.p99
                print(f"  p99 added by {name}: {added * 1e3:.3f} ms")
                summary[name] = {"rps_half": run.rps, "p99_added_ms": added * 1e3}
            print(
                "\n"
                + json.dumps(
                    {
                        "direct_rps": direct.rps,
                        "haproxy_rps": haproxy.rps,
                        "conveyor_rps": conveyor.rps,
                        "ratio": conveyor.rps / haproxy.rps,
                        "half_load": summary,
                    }
                )
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
