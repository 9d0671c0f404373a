"""Benchmark: nginx direct vs through HAProxy vs through conveyor's proxy (a benchmark, not a test).

    .venv/bin/python benchmarks/proxy.py [--seconds 3] [--connections 64] [--rounds 3]

What it does, all on 127.0.0.1, everything cleaned up at the end:

* nginx (1 worker, keep-alive, `return 200` of a 13-byte body) is the backend; where nginx is not
  installed, HAProxy returning the same 13 bytes itself (`http-request return`, 1 thread).
* Then (`--workers N`, default 2; benchmarks/bench_workers.py): N workers beside HAProxy with
  `nbthread N`, route switch latency, `kill -9` of a worker under load, `--reloads` reloads in a
  row under 64 keep-alive connections.
* HAProxy (http mode, 1 thread, keep-alive and connection reuse to nginx) and conveyor's proxy
  (`python -m conveyor.proxy`, one route) sit in front of it.
* Maximum load: wrk (1 thread, `--connections` keep-alive connections, closed loop), `--rounds`
  rounds, each running direct, HAProxy and conveyor in turn; medians are reported, and the
  conveyor/HAProxy ratio of each round (the same nginx, the same minute). The proxies' CPU time
  per request is read from /proc/<pid>/stat around each run: it varies less than req/s when
  something else shares the cores.
* Half load: an open-loop generator (`benchmarks/loadgen.c`, compiled here with gcc; wrk2 is not
  packaged in Debian bookworm) sends at a constant rate of half of each target's median maximum
  and measures every latency from the request's *scheduled* send time, so a stall is charged to
  every request it delays (no coordinated omission). For each proxy, nginx direct is measured at
  the same rate with the same CPU placement: the p99 a proxy adds is its p99 minus that one.
  Each figure is the median (by p99) of `--rounds` interleaved runs.

CPU placement on this 2-core machine: nginx on core 0, the proxy under test on core 1 (alone),
the load generator on core 0 beside nginx (nginx returning a constant costs little). For nginx
direct at its own maximum (and half of it) the generator runs on core 1. Both proxies get the
same placement, so the ratio is fair; the absolute figures are those of a machine where the
load generator competes with the backend.
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
GCC = "/usr/bin/gcc"
# Seconds of each open-loop run sent but not recorded (connections warm, caches hot).
WARMUP = 0.5


@dataclass
class Result:
    rps: float
    p50: float  # seconds
    p99: float
    connections: int
    cpu_us: float = 0.0  # CPU time of the proxy per request (max-load runs of the proxies)
    sys_us: float = 0.0  # of which in the kernel (system time)


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


def backend_argv(tmp: Path, port: int) -> list[str]:
    """nginx returning a constant; where nginx is not installed, HAProxy returning the same 13
    bytes itself (`http-request return`), one thread: a backend as cheap as nginx's."""
    if Path(NGINX).exists():
        return [NGINX, "-c", str(nginx_config(tmp, port))]
    conf = tmp / "backend.cfg"
    conf.write_text(
        f"""
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    option http-keep-alive
frontend backend
    bind {LOCAL}:{port}
    http-request return status 200 content-type text/plain string "hello world!\\n"
"""
    )
    return [HAPROXY, "-db", "-f", str(conf)]


def haproxy_config(tmp: Path, port: int, backend: int, threads: int = 1) -> Path:
    conf = tmp / f"haproxy{threads}.cfg"
    conf.write_text(
        f"""
global
    nbthread {threads}
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


def group_cpu(pgid: int) -> tuple[float, float]:
    """CPU seconds (user+system, system) of every live process of a process group (conveyor:
    the keeper and its workers; HAProxy: one process, its threads included in its
    /proc/<pid>/stat)."""
    total = system = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tick
            system += int(fields[12]) / tick
    return total, system


def wrk(
    port: int,
    connections: int,
    seconds: float,
    core: int | None,
    pid: int | None = None,
    threads: int = 1,
) -> Result:
    cpu_before = group_cpu(pid) if pid is not None else (0.0, 0.0)
    out = subprocess.run(
        [
            *(pinned(core) if core is not None else []),
            WRK,
            f"-t{threads}",
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
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _duration(re.search(r"^ +50% +(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _duration(re.search(r"^ +99% +(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if errors:
        print(f"  warning: {errors.group(0)}", file=sys.stderr)
    cpu_us = sys_us = 0.0
    if pid is not None:
        cpu_after = group_cpu(pid)
        cpu_us = (cpu_after[0] - cpu_before[0]) / total * 1e6
        sys_us = (cpu_after[1] - cpu_before[1]) / total * 1e6
    return Result(rps, p50, p99, connections, cpu_us, sys_us)


def build_loadgen(tmp: Path) -> Path:
    binary = tmp / "loadgen"
    source = Path(__file__).with_name("loadgen.c")
    subprocess.run([GCC, "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


def open_loop(
    loadgen: Path, port: int, rate: float, seconds: float, connections: int, core: int
) -> Result:
    """Constant-rate load; latencies from each request's scheduled send time."""
    argv = [str(loadgen), LOCAL, str(port), f"{rate:.0f}", f"{seconds:g}", str(connections)]
    proc = subprocess.run(
        [*pinned(core), *argv, str(WARMUP)],
        capture_output=True,
        text=True,
    )
    if not proc.stdout:
        raise RuntimeError(f"loadgen failed: {proc.stderr.strip()}")
    out = json.loads(proc.stdout)
    if proc.returncode or out["non2xx"]:
        print(f"  warning: loadgen {out}", file=sys.stderr)
    return Result(
        out["recorded"] / seconds, out["p50_us"] * 1e-6, out["p99_us"] * 1e-6, connections
    )


def set_conveyor_route(control: Path, port: int, backend: int) -> None:
    from conveyor.routers.base import Backend
    from conveyor.routers.builtin import ProxyClient

    asyncio.run(
        ProxyClient(control).set_route(
            "bench/web", (LOCAL, port), [Backend("blue", LOCAL, backend, 100)]
        )
    )


def hot_path(control: Path) -> str:
    """What the conveyor proxy's workers run: compiled (mypyc) or interpreted."""
    from conveyor.routers.builtin import ProxyClient

    status = asyncio.run(ProxyClient(control).call({"op": "status"}))
    return ", ".join(sorted({w.get("hot_path", "interpreted") for w in status["workers"]}))


def show(name: str, r: Result) -> None:
    cpu = f"   {r.cpu_us:5.1f} CPU-us/req ({r.sys_us:.1f} system)" if r.cpu_us else ""
    print(
        f"{name:<26} {r.rps:>10,.0f} req/s   p50 {r.p50 * 1e3:7.3f} ms   "
        f"p99 {r.p99 * 1e3:7.3f} ms{cpu}"
    )


def median_by(results: list[Result], key: str) -> Result:
    return sorted(results, key=lambda r: float(getattr(r, key)))[len(results) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="then: that many workers beside HAProxy with as many threads, a worker killed "
        "under load, reloads under load, switch latency (0: skip)",
    )
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--skip-half-load", action="store_true")
    args = parser.parse_args()
    for binary in (HAPROXY, WRK, GCC):
        if not Path(binary).exists():
            print(
                f"missing {binary} (apt-get install -y nginx-light haproxy wrk gcc)",
                file=sys.stderr,
            )
            return 2
    print(f"load average: {os.getloadavg()[0]:.2f} (compare runs made below 1.5)")
    if not Path(NGINX).exists():
        print("backend: HAProxy returning the 13 bytes itself (nginx is not installed)")
    tmp = Path(tempfile.mkdtemp(prefix="proxybench", dir="/tmp"))
    nginx_port, haproxy_port, conveyor_port = free_port(), free_port(), free_port()
    control = tmp / "proxy.sock"
    try:
        loadgen = build_loadgen(tmp)
        with (
            process(
                [*pinned(SERVER_CORE), *backend_argv(tmp, nginx_port)],
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
            ) as haproxy_proc,
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
                    "--workers",
                    "1",
                ],
                tmp / "conveyor.out",
            ) as conveyor_proc,
        ):
            wait_port(nginx_port)
            wait_port(haproxy_port)
            deadline = time.monotonic() + 10
            while not control.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            set_conveyor_route(control, conveyor_port, nginx_port)
            wait_port(conveyor_port)
            print(
                f"conveyor hot path: {hot_path(control)} "
                "(`conveyor proxy compile`; CONVEYOR_PROXY_NATIVE=0: interpreted)"
            )

            c, s, n = args.connections, args.seconds, args.rounds
            # Warm-up (connection pools, CPU caches), not reported.
            for port in (nginx_port, haproxy_port, conveyor_port):
                wrk(port, c, 1, LOAD_CORE)
            print(f"max load: wrk -t1 -c{c} -d{s:g}s, keep-alive, 13-byte body, {n} rounds")
            rounds: list[tuple[Result, Result, Result]] = []
            for _ in range(n):
                rounds.append(
                    (
                        wrk(nginx_port, c, s, PROXY_CORE),
                        wrk(haproxy_port, c, s, LOAD_CORE, haproxy_proc.pid),
                        wrk(conveyor_port, c, s, LOAD_CORE, conveyor_proc.pid),
                    )
                )
            ratios = sorted(cv.rps / hp.rps for _, hp, cv in rounds)
            direct = median_by([r[0] for r in rounds], "rps")
            haproxy = median_by([r[1] for r in rounds], "rps")
            conveyor = median_by([r[2] for r in rounds], "rps")
            show("backend direct", direct)
            show("via haproxy", haproxy)
            show("via conveyor", conveyor)
            print(
                "conveyor / haproxy req/s per round: "
                + ", ".join(f"{x:.2f}" for x in ratios)
                + f" (median {ratios[len(ratios) // 2]:.2f})"
            )

            print(
                f"\nhalf load: open loop at 50% of each target's median max, {c} connections, "
                f"{s:g}s (+{WARMUP:g}s warm-up) per run, median of {n} by p99"
            )
            targets = (
                ("backend direct", nginx_port, direct.rps / 2, PROXY_CORE),
                ("via haproxy", haproxy_port, haproxy.rps / 2, LOAD_CORE),
                ("via conveyor", conveyor_port, conveyor.rps / 2, LOAD_CORE),
                # The same offered load as conveyor's half load: HAProxy is then at about a
                # quarter of its maximum, which shows how much of the p99 is the load level.
                ("via haproxy, same rate", haproxy_port, conveyor.rps / 2, LOAD_CORE),
            )
            runs: dict[str, list[Result]] = {}
            for _ in range(0 if args.skip_half_load else n):
                for name, port, rate, core in targets:
                    runs.setdefault(name, []).append(open_loop(loadgen, port, rate, s, c, core))
                    if port != nginx_port:
                        # nginx direct at the same rate and placement: the baseline.
                        runs.setdefault(f"{name} base", []).append(
                            open_loop(loadgen, nginx_port, rate, s, c, core)
                        )
            summary: dict[str, dict[str, float]] = {}
            for name, _, rate, _ in targets if runs else ():
                run = median_by(runs[name], "p99")
                show(f"{name} @ {rate:,.0f}/s", run)
                entry = {"rate": rate, "p50_ms": run.p50 * 1e3, "p99_ms": run.p99 * 1e3}
                if f"{name} base" in runs:
                    base = median_by(runs[f"{name} base"], "p99")
                    show("  backend direct, same rate", base)
                    added = run.p99 - base.p99
                    print(f"  p99 added: {added * 1e3:.3f} ms")
                    entry |= {"base_p99_ms": base.p99 * 1e3, "p99_added_ms": added * 1e3}
                summary[name] = entry
            print(
                "\n"
                + json.dumps(
                    {
                        "direct_rps": direct.rps,
                        "haproxy_rps": haproxy.rps,
                        "conveyor_rps": conveyor.rps,
                        "haproxy_cpu_us": haproxy.cpu_us,
                        "conveyor_cpu_us": conveyor.cpu_us,
                        "haproxy_sys_us": haproxy.sys_us,
                        "conveyor_sys_us": conveyor.sys_us,
                        "ratios": ratios,
                        "half_load": summary,
                    }
                )
            )
            if args.workers:
                from bench_workers import workers_section

                workers_section(tmp, nginx_port, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
