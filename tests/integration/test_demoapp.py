"""The demo app and worker, run as real processes through LocalRuntime."""

from __future__ import annotations

import ast
import asyncio
import http.client
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.config.loader import load_config
from conveyor.health import probe_http
from conveyor.runtimes import Handle, LocalRuntime, Workload, free_port

DEMOAPP = Path(__file__).resolve().parents[2] / "examples" / "demoapp"
PY = shlex.quote(sys.executable)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def probe(port: int) -> tuple[bool, str]:
    return asyncio.run(probe_http("127.0.0.1", port, "/healthz", 1.0))


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cv", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def log_of(h: Handle) -> Path:
    return Path(str(h.ref["log"]))


def output_of(runner: Runner, h: Handle) -> str:
    """The app's output, once its log writer has written what it left in its pipes."""
    return "\n".join(runner.runtime.tail(h, 1000))


class Runner:
    """Starts the demo app/worker and stops whatever is left at the end of the test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.runtime = LocalRuntime(workdir / "logs")
        self.started: list[Handle] = []

    def start(
        self, env: dict[str, str] | None = None, *, script: str = "app.py", cwd: Path = DEMOAPP
    ) -> tuple[Handle, int]:
        port = free_port()
        args = f" --port {port}" if script == "app.py" else ""
        spec = Workload(
            app="demo",
            environment="test",
            service=script.removesuffix(".py"),
            color=f"c{len(self.started)}",  # each start its own log
            version="v1",
            artifact=str(cwd),
            command=f"{PY} {script}{args}",
            port=port,
            env={"PATH": os.environ["PATH"], **(env or {})},
        )
        inst = self.runtime.start_sync(spec)
        self.started.append(inst)
        return inst, port

    def start_healthy(self, **env: str) -> tuple[Handle, int]:
        inst, port = self.start(env)
        wait_until(lambda: probe(port)[0], 15, "the app to become healthy")
        return inst, port

    def close(self) -> None:
        for inst in self.started:
            self.runtime.stop_sync(inst, 0)


@pytest.fixture
def runner(workdir: Path) -> Iterator[Runner]:
    r = Runner(workdir)
    yield r
    r.close()


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=15)


def test_version_comes_from_demo_json_and_env_overrides_it(runner: Runner, workdir: Path) -> None:
    _, port = runner.start_healthy()
    status, headers, body = request(connect(port), "GET", "/")
    assert (status, body, headers["X-Demo-Version"]) == (200, b"hello from v1\n", "v1")
    assert headers["Content-Type"].startswith("text/plain")

    release = workdir / "release"
    release.mkdir()
    shutil.copy(DEMOAPP / "app.py", release)
    (release / "demo.json").write_text('{"version": "v2"}')
    _, port2 = runner.start(cwd=release)
    wait_until(lambda: probe(port2)[0], 15, "v2 healthy")
    assert request(connect(port2), "GET", "/")[2] == b"hello from v2\n"

    _, port3 = runner.start_healthy(DEMO_VERSION="v3-from-env")
    conn = connect(port3)
    status, headers, body = request(conn, "GET", "/version")
    info = json.loads(body)
    assert headers["Content-Type"] == "application/json"
    assert info["version"] == "v3-from-env"
    assert isinstance(info["pid"], int)


def test_error_rate_is_exact_over_100_requests_on_one_keepalive_connection(
    runner: Runner,
) -> None:
    _, port = runner.start_healthy(DEMO_ERROR_RATE="0.05")
    conn = connect(port)
    statuses = [request(conn, "GET", "/")[0] for _ in range(100)]
    assert statuses.count(500) == 5
    assert statuses.count(200) == 95
    # The 500s are spread out, not bunched: every 20th request.
    assert [i for i, s in enumerate(statuses, 1) if s == 500] == [20, 40, 60, 80, 100]


def test_error_rate_uses_exact_arithmetic(runner: Runner) -> None:
    # 0.29 * 100 as floats is 28.999..., which would give 28.
    _, port = runner.start_healthy(DEMO_ERROR_RATE="0.29")
    conn = connect(port)
    statuses = [request(conn, "GET", "/")[0] for _ in range(100)]
    assert statuses.count(500) == 29


def test_unhealthy_app_answers_503(runner: Runner) -> None:
    _, port = runner.start({"DEMO_HEALTHY": "false"})

    def answering() -> bool:
        return probe(port)[1] != "connection refused"

    wait_until(answering, 15, "the app to listen")
    assert probe(port) == (False, "HTTP 503")
    assert request(connect(port), "GET", "/")[0] == 200  # only health is affected


def test_healthz_ok(runner: Runner) -> None:
    _, port = runner.start_healthy()
    assert probe(port) == (True, "HTTP 200")
    assert request(connect(port), "GET", "/healthz")[2] == b"ok"


def test_echo_with_content_length_and_chunked(runner: Runner) -> None:
    _, port = runner.start_healthy()
    conn = connect(port)
    payload = os.urandom(100_000)
    status, headers, body = request(
        conn, "POST", "/echo", payload, {"Content-Type": "application/x-test"}
    )
    assert (status, body, headers["Content-Type"]) == (200, payload, "application/x-test")

    chunks = [b"hello ", b"chunked ", b"world" * 1000]
    conn.putrequest("POST", "/echo")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for chunk in chunks:
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"".join(chunks))
    # The connection is still usable afterwards (the whole chunked body was consumed).
    assert request(conn, "GET", "/")[0] == 200


def test_slow_and_latency(runner: Runner) -> None:
    _, port = runner.start_healthy(DEMO_LATENCY_MS="200")
    conn = connect(port)
    started = time.monotonic()
    assert request(conn, "GET", "/slow?ms=300")[2] == b"slept 300 ms\n"
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert request(conn, "GET", "/")[0] == 200
    assert time.monotonic() - started >= 0.2
    assert request(conn, "GET", "/slow?ms=abc")[0] == 400
    assert request(conn, "GET", "/nope")[0] == 404


def test_metrics(runner: Runner) -> None:
    _, port = runner.start_healthy(DEMO_ERROR_RATE="0.5", DEMO_VERSION="v9")
    conn = connect(port)
    for _ in range(10):
        request(conn, "GET", "/")
    request(conn, "GET", "/healthz")
    status, headers, body = request(conn, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'http_requests_total{status="200",version="v9"} 5\n' in text
    assert 'http_requests_total{status="500",version="v9"} 5\n' in text
    assert "# TYPE http_request_duration_seconds histogram" in text
    assert 'http_request_duration_seconds_bucket{status="200",version="v9",le="+Inf"} 5\n' in text
    assert 'http_request_duration_seconds_count{status="500",version="v9"} 5\n' in text
    assert re.search(
        r'http_request_duration_seconds_sum\{status="200",version="v9"\} [0-9.e-]+\n', text
    )
    # Buckets are cumulative.
    counts = [
        int(m.group(1))
        for m in re.finditer(r'_bucket\{status="200",version="v9",le="[^"]+"\} (\d+)', text)
    ]
    assert counts == sorted(counts) and counts[-1] == 5


def test_slow_start(runner: Runner) -> None:
    inst, port = runner.start({"DEMO_START_DELAY": "1.5"})
    wait_until(lambda: probe(port)[0], 15, "healthy after the delay")
    # It cannot have been listening before the delay was over.
    assert time.time() - inst.started_at >= 1.4


def test_crash_after(runner: Runner) -> None:
    inst, _ = runner.start({"DEMO_CRASH_AFTER": "0.5"})
    wait_until(lambda: not runner.runtime.alive(inst), 15, "the crash")
    assert runner.runtime.exit_detail(inst) == "exited with code 3"
    assert "crashing on purpose" in output_of(runner, inst)


def test_sigterm_finishes_in_flight_requests(runner: Runner) -> None:
    inst, port = runner.start_healthy()
    idle = connect(port)  # an idle keep-alive connection must not hold up the exit
    assert request(idle, "GET", "/")[0] == 200
    result: list[tuple[int, bytes]] = []

    def slow_request() -> None:
        status, _, body = request(connect(port), "GET", "/slow?ms=1500")
        result.append((status, body))

    client = threading.Thread(target=slow_request)
    client.start()

    def in_flight() -> bool:
        metrics = request(connect(port), "GET", "/metrics")[2].decode()
        return "http_requests_in_flight 2\n" in metrics  # the slow one and this scrape

    wait_until(in_flight, 10, "the slow request to be in flight")
    started = time.monotonic()
    asyncio.run(runner.runtime.stop(inst, grace=10))
    assert time.monotonic() - started < 5
    client.join(10)
    assert result == [(200, b"slept 1500 ms\n")]
    assert runner.runtime.exit_detail(inst) == "exited with code 0"
    assert "in-flight requests finished" in output_of(runner, inst)
    assert probe(port) == (False, "connection refused")


def test_sigterm_while_booting_exits_0(runner: Runner) -> None:
    inst, _ = runner.start({"DEMO_START_DELAY": "30"})
    # Signal only once the app catches SIGTERM, or the default action would kill it.
    wait_until(lambda: _sigterm_caught(int(inst.ref["pid"])), 10, "SIGTERM handler installed")
    runner.runtime.stop_sync(inst, grace=5)
    assert runner.runtime.exit_detail(inst) == "exited with code 0"


def _sigterm_caught(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (15 - 1)))
    return False


def test_worker_heartbeats_and_exits_0(runner: Runner) -> None:
    inst, _ = runner.start({"DEMO_VERSION": "w5"}, script="worker.py")

    def beats() -> int:
        return log_of(inst).read_text().count("worker w5 heartbeat")

    wait_until(lambda: beats() >= 2, 10, "two heartbeats")
    runner.runtime.stop_sync(inst, grace=5)
    assert runner.runtime.exit_detail(inst) == "exited with code 0"
    assert "got SIGTERM" in output_of(runner, inst)


def test_app_reads_port_from_environment(runner: Runner, workdir: Path) -> None:
    port = free_port()
    spec = Workload(
        app="demo",
        environment="test",
        service="web",
        color="green",
        version="v1",
        artifact=str(DEMOAPP),
        command=f"{PY} app.py",
        port=port,
        env={"PATH": os.environ["PATH"]},  # the runtime adds PORT
    )
    inst = runner.runtime.start_sync(spec)
    runner.started.append(inst)
    wait_until(lambda: probe(port)[0], 15, "healthy on $PORT")


def test_example_config_is_consistent() -> None:
    config = tomllib.loads((DEMOAPP / "conveyor.toml").read_text())
    web = config["services"]["web"]
    assert "{port}" in web["command"] and "app.py" in web["command"]
    assert web["port"] == 8080
    assert web["health"]["path"] == "/healthz"
    assert config["services"]["worker"]["kind"] == "worker"
    assert json.loads((DEMOAPP / "demo.json").read_text()) == {"version": "v1"}

    loaded = load_config(DEMOAPP / "conveyor.toml")
    dev = loaded.environment("dev")
    assert dev.services["web"].port == 8080
    assert dev.services["web"].command_for(4321) == "python3 app.py --port 4321"
    assert dev.services["worker"].kind == "worker"
    assert loaded.environment("staging").services["web"].port == 8081
    # The scripts run as plain python3 with nothing but the standard library.
    for script in ("app.py", "worker.py"):
        tree = ast.parse((DEMOAPP / script).read_text())
        modules = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        modules |= {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        }
        assert modules, script
        assert {m.split(".")[0] for m in modules} <= set(sys.stdlib_module_names), script
