"""The proxy's per-request Python cost, without sockets (a benchmark, not a test).

    .venv/bin/python benchmarks/proxy_hotpath.py [--requests 200000] [--compiled]

One client connection and one pooled backend connection with transports that only count bytes:
each round feeds a request as wrk sends it to the client protocol and the backend's response to
the upstream protocol, i.e. everything the proxy does per request in Python and in httptools,
and nothing of the kernel's or the event loop's. CPU time (process_time) per request, best of 5.
Use it to compare hot-path changes: it varies far less than a run through real sockets.
`--compiled`: the build of `conveyor proxy compile` (proxy/native.py), as the proxy's workers run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

# Imported in run(), after `--compiled` has had its chance to load the build first.

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 06 Dec 2026 04:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n"
    b"hello world!\n"
)


class Sink(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.bytes += len(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("closed")

    def is_closing(self) -> bool:
        return False


def run(requests: int) -> float:
    from conveyor.proxy.downstream import ClientProtocol
    from conveyor.proxy.model import Limits, Route, parse_backends
    from conveyor.proxy.state import ProxyState
    from conveyor.proxy.upstream import UpstreamProtocol

    loop = asyncio.new_event_loop()
    state = ProxyState(loop)
    backends = parse_backends(
        [{"color": "blue", "host": "127.0.0.1", "port": 8000, "weight": 100}], {}
    )
    state.routes["dev/web"] = Route("dev/web", ("127.0.0.1", 8080), backends, Limits())
    client = ClientProtocol(state, "dev/web")
    client_wire = Sink()
    client.connection_made(client_wire)
    up = UpstreamProtocol(state, "127.0.0.1", 8000)
    up_wire = Sink()
    up.connection_made(up_wire)
    state.pool.put(up)
    feed_client = client.data_received
    feed_up = up.data_received
    t0 = time.process_time()
    for _ in range(requests):
        feed_client(REQUEST)
        feed_up(RESPONSE)
    spent = time.process_time() - t0
    assert client_wire.bytes > 0 and up_wire.bytes > 0
    loop.close()
    return spent / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--compiled", action="store_true")
    args = parser.parse_args()
    if args.compiled:
        from conveyor.proxy import native

        if not native.activate().compiled:
            print(f"no compiled hot path: {native.STATE.reason}", file=sys.stderr)
            return 2
    best = min(run(args.requests) for _ in range(5))
    what = "compiled" if args.compiled else "interpreted"
    print(f"{best:.2f} CPU-us per request in Python and httptools, {what} (best of 5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
