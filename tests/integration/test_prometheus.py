"""PrometheusSource against a real Prometheus server scraping the demo app.

Needs /usr/bin/prometheus (Debian package `prometheus`): skipped without it, except in CI
(CI=true), where a missing server is a failure rather than a silently untested source.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.config.models import AnalysisCheck
from conveyor.core.analysis import Measurement, Verdict
from conveyor.demo import demo_app_source
from conveyor.metrics.base import Target
from conveyor.metrics.prometheus import PrometheusSource
from conveyor.runtimes.local import free_port

PROMETHEUS = Path("/usr/bin/prometheus")
LOCAL = "127.0.0.1"
ERROR_RATIO = (
    'sum(rate(http_requests_total{version="{version}",status=~"5.."}[10s]))'
    ' / sum(rate(http_requests_total{version="{version}"}[10s]))'
)
CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: demo
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@pytest.fixture(autouse=True)
def needs_prometheus() -> None:
    if not PROMETHEUS.exists():
        message = f"{PROMETHEUS} is missing (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_status(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection(LOCAL, port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers: no orphans either way."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
            return


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cvprom", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def demo(workdir: Path) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "DEMO_ERROR_RATE": "0.1", "DEMO_VERSION": "v2"}
    with open(workdir / "demo.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)],
            cwd=demo_app_source(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        wait_until(lambda: http_status(port, "/healthz") == 200, 20, "the demo app")
        yield port
    finally:
        stop(proc)


@pytest.fixture
def traffic(demo: int) -> Iterator[None]:
    """Requests to the demo app for as long as the test runs (paced to stay light)."""
    done = threading.Event()
    sent = 0

    def drive() -> None:
        nonlocal sent
        conn = http.client.HTTPConnection(LOCAL, demo, timeout=5)
        try:
            while not done.is_set():
                conn.request("GET", "/")
                conn.getresponse().read()
                sent += 1
                done.wait(0.005)
        finally:
            conn.close()

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    # Both status series exist before Prometheus' first scrape, so their rates cover the
    # same samples.
    wait_until(lambda: sent >= 50, 20, "the first requests")
    try:
        yield
    finally:
        done.set()
        thread.join(10)


@pytest.fixture
def prometheus(workdir: Path, demo: int, traffic: None) -> Iterator[str]:
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(CONFIG.replace("{port}", str(demo)))
    with open(workdir / "prometheus.log", "ab") as log:
        proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={LOCAL}:{port}",
                "--log.level=warn",
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        wait_until(lambda: http_status(port, "/-/ready") == 200, 60, "prometheus to be ready")
        yield f"http://{LOCAL}:{port}"
    finally:
        stop(proc)
        assert proc.poll() is not None


def measure(check: AnalysisCheck, target: Target) -> Measurement:
    result: Measurement = asyncio.run(PrometheusSource().measure(check, target, time.time()))
    return result


def test_error_ratio_from_prometheus(prometheus: str, workdir: Path) -> None:
    target = Target("shop", "dev", "web", "green", "v2", None, workdir, "dev/web")
    strict = AnalysisCheck(metric="prometheus", query=ERROR_RATIO, url=prometheus, max=0.01)
    # Scrapes every second; rate() needs two samples of each series.
    first = wait_until(
        lambda: (m := measure(strict, target)).verdict is not Verdict.INCONCLUSIVE and m,
        60,
        "prometheus to have data",
    )
    assert first.verdict is Verdict.FAIL, first
    assert first.value == pytest.approx(0.1, abs=0.02)
    lenient = AnalysisCheck(metric="prometheus", query=ERROR_RATIO, url=prometheus, max=0.5)
    m = measure(lenient, target)
    assert m.verdict is Verdict.PASS, m
    assert m.value == pytest.approx(0.1, abs=0.02)

    # Another version has no series at all: no data, not a failure.
    other = Target("shop", "dev", "web", "blue", "v1", None, workdir, "dev/web")
    m = measure(strict, other)
    assert (m.verdict, m.detail) == (Verdict.INCONCLUSIVE, "no data")

    # Two series (200 and 500) without aggregation.
    per_status = AnalysisCheck(
        metric="prometheus", query='http_requests_total{version="{version}"}', url=prometheus, max=1
    )
    m = measure(per_status, target)
    assert m.verdict is Verdict.INCONCLUSIVE
    assert m.detail == "query returned 2 series; aggregate it (e.g. sum(...))"

    # A query Prometheus refuses: its error is the detail.
    broken = AnalysisCheck(metric="prometheus", query="sum(", url=prometheus, max=1)
    m = measure(broken, target)
    assert m.verdict is Verdict.INCONCLUSIVE
    assert m.detail.startswith("prometheus: ")
