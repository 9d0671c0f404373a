"""A small keep-alive HTTP/1.1 load generator for the demo, the tests and the benchmarks.

It runs its own event loop in a background thread, drives N persistent connections at 127.0.0.1,
and counts what users would see: 2xx answers, other statuses, and socket errors. It is bounded in
requests and time and stops by itself. A request that fails is never hidden by a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

# A connect or a response slower than these is counted as an error (and sampled, with its stage).
CONNECT_TIMEOUT = 5.0
RESPONSE_TIMEOUT = 30.0


@dataclass
class LoadResult:
    requests: int = 0
    ok: int = 0
    non_2xx: int = 0
    errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    duration: float = 0.0

    @property
    def failed(self) -> int:
        return self.non_2xx + self.errors


class LoadGenerator:
    def __init__(
        self,
        host: str,
        port: int,
        path: str = "/",
        connections: int = 8,
        max_requests: int = 1_000_000,
        max_seconds: float = 300.0,
        rate: float | None = None,
        version_header: str = "x-demo-version",
    ) -> None:
        if not host.startswith("127.") and host != "localhost":
            raise ValueError("the load generator only targets loopback addresses")
        self.host, self.port, self.path = host, port, path
        self.connections = connections
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.rate = rate  # requests per second over all connections, None: as fast as possible
        self.version_header = version_header.lower().encode()
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> LoadGenerator:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.max_seconds + 10)
        return self.result

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.result.requests, self.result.failed

    def versions(self) -> Counter[str]:
        """Responses so far by the version header's value (a copy)."""
        with self._lock:
            return Counter(self.result.versions)

    async def _main(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.max_seconds
        await asyncio.gather(*(self._worker(i, deadline) for i in range(self.connections)))
        self.result.duration = time.monotonic() - t0

    async def _worker(self, index: int, deadline: float) -> None:
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"User-Agent: conveyor-loadgen\r\n\r\n"
        ).encode()
        interval = self.connections / self.rate if self.rate else 0.0
        next_at = time.monotonic() + (interval * index / max(1, self.connections))
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.result.requests >= self.max_requests:
                    break
                self.result.requests += 1
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
            started = time.perf_counter()
            fresh = False  # whether this request opened its connection (for error samples)
            stage = "request"
            try:
                if conn is None:
                    stage = "connect"
                    conn = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), timeout=CONNECT_TIMEOUT
                    )
                    fresh = True
                reader, writer = conn
                writer.write(request)
                stage = "response"
                status, version, keep = await asyncio.wait_for(
                    self._response(reader), timeout=RESPONSE_TIMEOUT
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                with self._lock:
                    self.result.errors += 1
                    if len(self.result.error_samples) < 10:
                        self.result.error_samples.append(_describe(exc, stage, fresh, started))
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            elapsed = time.perf_counter() - started
            with self._lock:
                self.result.statuses[status] += 1
                if version:
                    self.result.versions[version] += 1
                if 200 <= status < 300:
                    self.result.ok += 1
                else:
                    self.result.non_2xx += 1
                if len(self.result.latencies) < 200_000:
                    self.result.latencies.append(elapsed)
            if not keep:
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()
            with contextlib.suppress(OSError):
                await conn[1].wait_closed()

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, str, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = False
        keep = parts[0] == b"HTTP/1.1"
        version = ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            value = value.strip()
            if key == b"content-length":
                length = int(value)
            elif key == b"transfer-encoding" and value.lower() == b"chunked":
                chunked = True
            elif key == b"connection":
                keep = value.lower() != b"close"
            elif key == self.version_header:
                version = value.decode(errors="replace")
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length is not None:
            await reader.readexactly(length)
        elif status >= 200 and status not in (204, 304):
            await reader.read()  # body until close
            keep = False
        return status, version, keep


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def _describe(exc: BaseException, stage: str, fresh: bool, started: float) -> str:
    """One error sample: what failed, at which stage, on which kind of connection, when."""
    took = time.perf_counter() - started
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    conn = "a new connection" if fresh else "a kept-alive connection"
    return f"{what} ({stage} on {conn}, after {took:.3f}s, at {time.time():.3f})"
