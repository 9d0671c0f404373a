"""The conveyor demo app: a small web service whose behaviour is set per release.

Standard library only. Run it as `python3 app.py --port 8080`. The release's `demo.json`
(in the current directory) sets the defaults; environment variables override them:

  DEMO_VERSION       version string shown everywhere (default: demo.json "version", else "dev")
  DEMO_ERROR_RATE    0..1: that share of requests to / answer 500, deterministically
  DEMO_LATENCY_MS    added latency per request to /
  DEMO_HEALTHY       "false": /healthz answers 503 forever
  DEMO_START_DELAY   seconds to wait before listening (a slow boot)
  DEMO_CRASH_AFTER   exit with code 3 after this many seconds
  DEMO_HEALTH_SCRIPT a file: while it exists, /healthz answers the statuses it lists, one per
                     check, in turn ("503": unhealthy; "503 503 200": two failures, a pass, again)
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DRAIN_TIMEOUT = 10.0
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Probes and scrapes are not traffic: counting them would dilute the error rate the
# metrics are meant to show.
UNCOUNTED_PATHS = ("/healthz", "/metrics")


def log(message: str) -> None:
    print(f"demoapp[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    version: str
    error_rate: Fraction
    latency: float
    healthy: bool
    start_delay: float
    crash_after: float | None
    health_script: str = ""


def load_settings() -> Settings:
    file: dict[str, Any] = {}
    try:
        with open("demo.json", encoding="utf-8") as f:
            loaded = json.load(f)
        if isinstance(loaded, dict):
            file = loaded
    except FileNotFoundError:
        pass

    def setting(env: str, key: str, default: str) -> str:
        value = os.environ.get(env)
        if value is None:
            value = str(file.get(key, default))
        return value.strip()

    try:
        # Exact arithmetic: 0.29 as a float would give 28 errors in 100, not 29.
        rate = Fraction(Decimal(setting("DEMO_ERROR_RATE", "error_rate", "0")))
    except InvalidOperation:
        sys.exit("DEMO_ERROR_RATE must be a number between 0 and 1")
    if not 0 <= rate <= 1:
        sys.exit("DEMO_ERROR_RATE must be a number between 0 and 1")
    crash = setting("DEMO_CRASH_AFTER", "crash_after", "")
    return Settings(
        version=setting("DEMO_VERSION", "version", "dev"),
        error_rate=rate,
        latency=float(setting("DEMO_LATENCY_MS", "latency_ms", "0")) / 1000,
        healthy=setting("DEMO_HEALTHY", "healthy", "true").lower() not in ("false", "0", "no"),
        start_delay=float(setting("DEMO_START_DELAY", "start_delay", "0")),
        crash_after=float(crash) if crash else None,
        health_script=setting("DEMO_HEALTH_SCRIPT", "health_script", ""),
    )


class Metrics:
    """Prometheus counters and a latency histogram, labelled by status and version."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.lock = threading.Lock()
        self.counts: dict[int, int] = {}
        self.buckets: dict[int, list[int]] = {}
        self.sums: dict[int, float] = {}
        self.inflight = 0

    def observe(self, status: int, seconds: float) -> None:
        with self.lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            per_bucket = self.buckets.setdefault(status, [0] * len(BUCKETS))
            # Stored per bucket, made cumulative when rendered.
            index = bisect.bisect_left(BUCKETS, seconds)
            if index < len(BUCKETS):
                per_bucket[index] += 1
            self.sums[status] = self.sums.get(status, 0.0) + seconds

    def render(self) -> str:
        with self.lock:
            lines = [
                "# HELP http_requests_total Requests answered, by status.",
                "# TYPE http_requests_total counter",
            ]
            for status in sorted(self.counts):
                labels = f'status="{status}",version="{self.version}"'
                lines.append(f"http_requests_total{{{labels}}} {self.counts[status]}")
            lines += [
                "# HELP http_request_duration_seconds Time to answer a request.",
                "# TYPE http_request_duration_seconds histogram",
            ]
            for status in sorted(self.counts):
                labels = f'status="{status}",version="{self.version}"'
                running = 0
                for bound, n in zip(BUCKETS, self.buckets[status], strict=True):
                    running += n
                    lines.append(
                        f'http_request_duration_seconds_bucket{{{labels},le="{bound:g}"}} {running}'
                    )
                total = self.counts[status]
                lines.append(f'http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {total}')
                lines.append(f"http_request_duration_seconds_sum{{{labels}}} {self.sums[status]}")
                lines.append(f"http_request_duration_seconds_count{{{labels}}} {total}")
            lines += [
                "# HELP http_requests_in_flight Requests being answered right now.",
                "# TYPE http_requests_in_flight gauge",
                f"http_requests_in_flight {self.inflight}",
            ]
        return "\n".join(lines) + "\n"


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.version)
        self.started_at = time.time()
        self.draining = False
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.root_requests = 0
        self.scripted = 0  # health checks answered from the health script
        self.health_answers: dict[int, int] = {}  # status -> count, for /version

    def next_root_fails(self) -> bool:
        """Request n fails when floor(n * rate) steps up: exactly rate * 100 in every 100."""
        with self.lock:
            self.root_requests += 1
            n = self.root_requests
        rate = self.settings.error_rate
        return math.floor(n * rate) > math.floor((n - 1) * rate)

    def health_status(self) -> int:
        """What the next health check gets: the health script's next status while it exists.

        A test flips it from outside at the moment it wants (a deployment reached its bake, say),
        instead of racing a timer started with the process.
        """
        if not self.settings.healthy:
            return 503
        script = self.settings.health_script
        try:
            with open(script, encoding="utf-8") as f:
                statuses = [int(word) for word in f.read().split()]
        except (OSError, ValueError):
            statuses = []  # no script (or not yet written in full): healthy
        if not statuses:
            return 200
        with self.lock:
            index = self.scripted
            self.scripted += 1
        return statuses[index % len(statuses)]

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        with self.lock:
            self.metrics.inflight += 1
        try:
            yield
        finally:
            with self.lock:
                self.metrics.inflight -= 1
                self.idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self.lock:
            return self.idle.wait_for(lambda: self.metrics.inflight == 0, timeout)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demoapp"
    # Head and body go out in two writes: without TCP_NODELAY the second waits for the client's
    # delayed ACK (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    server: Server

    @property
    def app(self) -> App:
        return self.server.app

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def dispatch(self) -> None:
        started = time.perf_counter()
        url = urlsplit(self.path)
        routes = {
            ("GET", "/"): self.root,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/version"): self.version,
            ("POST", "/echo"): self.echo,
            ("GET", "/slow"): self.slow,
            ("GET", "/metrics"): self.metrics,
        }
        route = routes.get((self.command, url.path))
        with self.app.in_flight():
            if route is None:
                known = any(path == url.path for _, path in routes)
                status = self.send(405 if known else 404, b"not found\n")
            else:
                status = route(url.query)
        if url.path not in UNCOUNTED_PATHS:
            self.app.metrics.observe(status, time.perf_counter() - started)

    def send(self, status: int, body: bytes, content_type: str = "text/plain") -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Demo-Version", self.app.settings.version)
        if self.app.draining:
            # Shutting down: tell keep-alive clients not to send another request here.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        return status

    def root(self, query: str) -> int:
        if self.app.settings.latency:
            time.sleep(self.app.settings.latency)
        if self.app.next_root_fails():
            return self.send(500, b"injected error\n")
        return self.send(200, f"hello from {self.app.settings.version}\n".encode())

    def healthz(self, query: str) -> int:
        status = self.app.health_status()
        answers = self.app.health_answers
        with self.app.lock:
            answers[status] = answers.get(status, 0) + 1
        return self.send(status, b"ok" if status == 200 else b"unhealthy\n")

    def version(self, query: str) -> int:
        body = {
            "version": self.app.settings.version,
            "pid": os.getpid(),
            "started_at": self.app.started_at,
            "health": {str(k): v for k, v in sorted(self.app.health_answers.items())},
        }
        return self.send(200, json.dumps(body).encode() + b"\n", "application/json")

    def echo(self, query: str) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self.read_chunked()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        content_type = self.headers.get("Content-Type", "application/octet-stream")
        return self.send(200, body, content_type)

    def read_chunked(self) -> bytes:
        parts = []
        while True:
            size_line = self.rfile.readline(1024)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)  # the CRLF after each chunk
        while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(parts)

    def slow(self, query: str) -> int:
        try:
            ms = int(parse_qs(query).get("ms", ["1000"])[0])
        except ValueError:
            return self.send(400, b"ms must be an integer\n")
        ms = max(0, min(ms, 60_000))
        time.sleep(ms / 1000)
        return self.send(200, f"slept {ms} ms\n".encode())

    def metrics(self, query: str) -> int:
        body = self.app.metrics.render().encode()
        return self.send(200, body, "text/plain; version=0.0.4; charset=utf-8")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: the benchmarks would spend their time writing it

    def log_error(self, format: str, *args: Any) -> None:
        log(format % args)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many clients (the proxy, benchmarks) connect at once; the default backlog of 5 is small.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, ConnectionError | TimeoutError):
            return  # a client went away; nothing to report
        super().handle_error(request, client_address)


def main() -> None:
    parser = argparse.ArgumentParser(description="conveyor demo app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    args = parser.parse_args()
    settings = load_settings()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())

    if settings.crash_after is not None:
        crash_after = settings.crash_after

        def crash() -> None:
            log(f"{settings.version} crashing on purpose after {crash_after:g}s")
            os._exit(3)

        timer = threading.Timer(crash_after, crash)
        timer.daemon = True
        timer.start()

    if settings.start_delay and stop.wait(settings.start_delay):
        return  # told to stop while still booting

    app = App(settings)
    server = Server((args.host, args.port), app)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    log(f"{settings.version} listening on {args.host}:{server.server_address[1]}")

    while not stop.wait(1.0):
        pass
    app.draining = True
    server.shutdown()  # stops the accept loop
    server.socket.close()  # new connections are refused from here on
    drained = app.wait_idle(DRAIN_TIMEOUT)
    log(
        f"{settings.version} got SIGTERM: stopped accepting, "
        + ("in-flight requests finished, exiting" if drained else "drain timed out, exiting")
    )
    sys.exit(0)


if __name__ == "__main__":
    main()
