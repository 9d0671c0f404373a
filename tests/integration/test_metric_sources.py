"""The metric sources against real things: the proxy process, HTTP servers, shell commands."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conveyor.config.models import AnalysisCheck
from conveyor.core.analysis import Measurement, Verdict
from conveyor.metrics import Sources
from conveyor.metrics.base import Target
from conveyor.metrics.builtin import BuiltinSource
from conveyor.metrics.command import CommandSource
from conveyor.metrics.http import HttpSource
from conveyor.metrics.prometheus import PrometheusSource
from conveyor.routers.base import Backend, ProxyUnavailable
from conveyor.routers.builtin import BuiltinRouter, ProxyClient, start_proxy
from conveyor.runtimes.local import free_port, read_proc_stat

LOCAL = "127.0.0.1"


def wait_until(cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def measure(source: Any, check: AnalysisCheck, target: Target, now: float) -> Measurement:
    async def bounded() -> Measurement:
        return await asyncio.wait_for(source.measure(check, target, now), 30)

    result: Measurement = asyncio.run(bounded())
    return result


class Upstream(BaseHTTPRequestHandler):
    """Every 5th request to / answers 500; /ready says 200; /stats and /busy serve JSON."""

    counter = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        if self.path == "/ready":
            self._send(200, b"ok")
        elif self.path == "/down":
            self._send(503, b"down")
        elif self.path == "/stats":
            self._send(200, json.dumps({"queue": {"depth": 7}}).encode())
        elif self.path == "/text":
            self._send(200, b"not json")
        else:
            with Upstream.lock:
                Upstream.counter += 1
                n = Upstream.counter
            self._send(500 if n % 5 == 0 else 200, b"hello")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer((LOCAL, 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cv", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def target(port: int | None, cwd: Path, route: str = "dev/web") -> Target:
    return Target("shop", "dev", "web", "green", "v2", port, cwd, route)


# --- builtin: the real proxy ---------------------------------------------------------------------


@pytest.fixture
def proxy(home: Path) -> Iterator[BuiltinRouter]:
    control, pidfile, log = home / "proxy.sock", home / "proxy.pid", home / "logs" / "proxy.log"
    pid = start_proxy(home, control, pidfile, log)
    try:
        yield BuiltinRouter(home, control, pidfile, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid))


def _alive(pid: int) -> bool:
    # Reap it if it is our child; a zombie (ours or not) is gone for every purpose here.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    stat = read_proc_stat(pid)
    return stat is not None and stat.state != "Z"


def drive(port: int, n: int) -> None:
    conn = http.client.HTTPConnection(LOCAL, port, timeout=10)
    try:
        for _ in range(n):
            conn.request("GET", "/")
            conn.getresponse().read()
    finally:
        conn.close()


def test_builtin_error_rate_and_latency_from_the_real_proxy(
    proxy: BuiltinRouter, upstream: int, home: Path
) -> None:
    listen = free_port()
    asyncio.run(
        proxy.client.set_route("dev/web", (LOCAL, listen), [Backend("green", LOCAL, upstream)])
    )
    source = BuiltinSource(proxy)
    errors = AnalysisCheck(metric="error_rate", max=0.01, min_requests=50, window=10)
    p99 = AnalysisCheck(metric="latency_p99_ms", max=5000, min_requests=50, window=10)
    tgt = target(upstream, home)

    drive(listen, 10)  # before the first snapshot: outside any window
    # The first measurement is the baseline: nothing to compare with yet.
    first = measure(source, errors, tgt, 100.0)
    assert first.verdict is Verdict.INCONCLUSIVE
    Upstream.counter = 0
    drive(listen, 100)
    m = measure(source, errors, tgt, 101.0)
    assert m.verdict is Verdict.FAIL, m
    assert m.value == pytest.approx(0.2)
    assert m.detail == "20% > 1% (100 requests in 1s)"
    lat = measure(source, p99, tgt, 101.0)
    assert lat.verdict is Verdict.PASS, lat
    assert lat.value is not None and 0 < lat.value <= 5000

    # Too few requests in the window: no verdict either way.
    drive(listen, 10)
    few = measure(source, AnalysisCheck(metric="error_rate", max=0.5, window=0.5), tgt, 102.0)
    assert few.verdict is Verdict.INCONCLUSIVE
    assert few.detail.startswith("not enough requests: 10 < 50")


def test_builtin_unknown_route_and_color_and_dead_proxy(proxy: BuiltinRouter, home: Path) -> None:
    source = Sources(proxy)
    check = AnalysisCheck(metric="error_rate", max=0.01)
    m = measure(source, check, target(None, home, route="dev/nope"), 1.0)
    assert (m.verdict, m.detail) == (Verdict.INCONCLUSIVE, "no route dev/nope in the proxy")
    asyncio.run(proxy.shutdown())
    wait_until(lambda: not (proxy.client.path.exists() and _answers(proxy.client)))
    gone = measure(source, check, target(None, home), 2.0)
    assert gone.verdict is Verdict.INCONCLUSIVE
    assert gone.detail.startswith("proxy stats unavailable")


def _answers(client: ProxyClient) -> bool:
    try:
        asyncio.run(client.ping())
    except ProxyUnavailable:
        return False
    return True


def test_builtin_one_stats_call_per_tick(proxy: BuiltinRouter, home: Path) -> None:
    calls = 0
    real = proxy.client.stats

    async def counted() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return await real()

    proxy.client.stats = counted  # type: ignore[method-assign]
    source = BuiltinSource(proxy)
    checks = [
        AnalysisCheck(metric="error_rate", max=0.01),
        AnalysisCheck(metric="latency_p99_ms", max=100),
    ]

    async def tick(now: float) -> list[Measurement]:
        tgt = target(None, home)
        return list(await asyncio.gather(*(source.measure(c, tgt, now) for c in checks)))

    async def both() -> None:
        await tick(1.0)
        await tick(2.0)

    asyncio.run(both())
    assert calls == 2


# --- http ----------------------------------------------------------------------------------------


def test_http_status_and_field(upstream: int, home: Path) -> None:
    src = HttpSource()
    tgt = target(upstream, home)
    ready = AnalysisCheck(metric="http", url="http://127.0.0.1:{port}/ready")
    assert measure(src, ready, tgt, 0).verdict is Verdict.PASS
    down = AnalysisCheck(metric="http", url="http://127.0.0.1:{port}/down")
    m = measure(src, down, tgt, 0)
    assert (m.verdict, m.detail) == (Verdict.FAIL, "HTTP 503")
    depth = AnalysisCheck(
        metric="http", url=f"http://{LOCAL}:{{port}}/stats", field="queue.depth", max=5
    )
    m = measure(src, depth, tgt, 0)
    assert (m.verdict, m.value, m.detail) == (Verdict.FAIL, 7.0, "7 > 5")
    missing = AnalysisCheck(metric="http", url=f"http://{LOCAL}:{{port}}/stats", field="x", max=5)
    assert measure(src, missing, tgt, 0).verdict is Verdict.INCONCLUSIVE
    text = AnalysisCheck(metric="http", url=f"http://{LOCAL}:{{port}}/text", field="x", max=5)
    m = measure(src, text, tgt, 0)
    assert (m.verdict, m.detail) == (Verdict.INCONCLUSIVE, "the response is not JSON")


def test_http_refused_and_timeout_fail(home: Path) -> None:
    src = HttpSource()
    refused = AnalysisCheck(metric="http", url=f"http://{LOCAL}:{free_port()}/ready")
    m = measure(src, refused, target(None, home), 0)
    assert (m.verdict, m.detail) == (Verdict.FAIL, "connection refused")
    # A listener that never answers.
    with socket.socket() as silent:
        silent.bind((LOCAL, 0))
        silent.listen()
        port = silent.getsockname()[1]
        slow = AnalysisCheck(metric="http", url=f"http://{LOCAL}:{port}/", timeout=0.3)
        started = time.monotonic()
        m = measure(src, slow, target(None, home), 0)
    assert (m.verdict, m.detail) == (Verdict.FAIL, "timed out after 300ms")
    assert time.monotonic() - started < 30  # bounded (the listener never answers), not fast


def test_http_port_placeholder_without_a_port_is_inconclusive(home: Path) -> None:
    check = AnalysisCheck(metric="http", url="http://127.0.0.1:{port}/ready")
    m = measure(HttpSource(), check, target(None, home), 0)
    assert m.verdict is Verdict.INCONCLUSIVE


def test_prometheus_unreachable_is_inconclusive(home: Path) -> None:
    check = AnalysisCheck(
        metric="prometheus", query="up", max=1, url=f"http://{LOCAL}:{free_port()}"
    )
    m = measure(PrometheusSource(), check, target(None, home), 0)
    assert m.verdict is Verdict.INCONCLUSIVE
    assert m.detail == "prometheus unreachable: connection refused"


# --- command -------------------------------------------------------------------------------------


def test_command_exit_status_cwd_and_placeholders(home: Path) -> None:
    src = CommandSource()
    (home / "check.sh").write_text('test "$1" = v2 && test "$CONVEYOR_COLOR" = green\n')
    tgt = target(4100, home)
    ok = AnalysisCheck(metric="command", command="sh check.sh {version}")
    assert measure(src, ok, tgt, 0).verdict is Verdict.PASS
    bad = AnalysisCheck(metric="command", command="echo nope >&2; exit 3")
    m = measure(src, bad, tgt, 0)
    assert (m.verdict, m.detail) == (Verdict.FAIL, "exit code 3: nope")


def test_command_gets_the_basics_of_the_environment_not_the_operators_exports(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPERATOR_TOKEN", "do-not-leak")  # as if the agent's starter exported it
    monkeypatch.setenv("LC_TIME", "C")
    check = AnalysisCheck(
        metric="command",
        command='test -z "$OPERATOR_TOKEN" && test -n "$PATH" && test "$LC_TIME" = C',
    )
    m = measure(CommandSource(), check, target(4100, home), 0)
    assert (m.verdict, m.detail) == (Verdict.PASS, "exit code 0")


def test_command_json_field(home: Path) -> None:
    src = CommandSource()
    check = AnalysisCheck(
        metric="command",
        command='printf \'{"port": {port}, "ratio": 0.25}\'',
        field="ratio",
        max=0.1,
    )
    m = measure(src, check, target(4100, home), 0)
    assert (m.verdict, m.value, m.detail) == (Verdict.FAIL, 0.25, "0.25 > 0.1")
    not_json = AnalysisCheck(metric="command", command="echo hi", field="x", max=1)
    m = measure(src, not_json, target(4100, home), 0)
    assert (m.verdict, m.detail) == (Verdict.INCONCLUSIVE, "stdout is not JSON")


def test_command_timeout_kills_the_group_without_blocking_the_loop(home: Path) -> None:
    pidfile = home / "child.pid"
    # A helper in the background that would outlive a killed shell if only the shell died.
    check = AnalysisCheck(
        metric="command",
        command=f"sleep 60 & echo $! > {pidfile}; wait",
        timeout=0.5,
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def run() -> Measurement:
        task = asyncio.create_task(ticker())
        try:
            return await CommandSource().measure(check, target(None, home), 0)
        finally:
            task.cancel()

    m = asyncio.run(run())
    assert (m.verdict, m.detail) == (Verdict.FAIL, "timed out after 500ms")
    assert ticks >= 10  # the loop kept running while the command did
    helper = int(pidfile.read_text())
    wait_until(lambda: not _alive(helper))
