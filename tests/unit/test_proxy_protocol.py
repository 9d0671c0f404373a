"""The proxy's connection protocols driven with a `ProxyState` alone: no `Proxy`, no listener.

As uvicorn tests its protocols with a `ServerState` and no server: the client side is one end of
a real socket pair handed to `ClientProtocol`, the backend a real asyncio server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from conveyor.proxy.downstream import ClientProtocol
from conveyor.proxy.model import ColorStats, Limits, Route, parse_backends
from conveyor.proxy.state import ProxyState

LOCAL = "127.0.0.1"
ROUTE = "dev/web"
STEP = 10.0  # bound of every wait: the test fails instead of hanging


class Backend:
    """Answers every request `200 ok`; remembers the heads it got and its connection count."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.connections = 0
        self.port = 0
        self.handlers: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.heads.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.handlers.discard(task)
            writer.close()


class Client(asyncio.Protocol):
    """The real protocol, plus an event for its end (so the test waits on it, never sleeps).

    A wrapper, not a subclass: compiled (native.py), ClientProtocol cannot be subclassed by
    interpreted code, and the proxy's suites also run compiled (test_proxy_native.py).
    """

    def __init__(self, state: ProxyState, name: str) -> None:
        self.inner = ClientProtocol(state, name)
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)
        self.lost.set()


def route_to(port: int) -> Route:
    stats: dict[str, ColorStats] = {}
    backends = parse_backends(
        [{"color": "blue", "host": LOCAL, "port": port, "weight": 100}], stats
    )
    return Route(ROUTE, (LOCAL, 1), backends, Limits())


@asynccontextmanager
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    server = await asyncio.start_server(b.serve, LOCAL, 0)
    b.port = server.sockets[0].getsockname()[1]
    try:
        yield b
    finally:
        server.close()
        # The proxy's pooled connections are closed by now: let their handlers see the end.
        if b.handlers:
            await asyncio.wait(set(b.handlers), timeout=STEP)


@asynccontextmanager
async def connected(
    state: ProxyState,
) -> AsyncIterator[tuple[Client, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A `ClientProtocol` on one end of a socket pair; yields it and streams on the other end."""
    ours, theirs = socket.socketpair()
    loop = state.loop
    _, protocol = await loop.connect_accepted_socket(lambda: Client(state, ROUTE), theirs)
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        yield protocol, reader, writer
    finally:
        writer.close()
        await asyncio.wait_for(protocol.lost.wait(), STEP)
        state.pool.close_all()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, extra: bytes = b""
) -> bytes:
    writer.write(b"GET /x HTTP/1.1\r\nHost: example.test\r\n" + extra + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), STEP)


def test_request_goes_to_the_backend_in_the_state_routes_and_the_connection_is_pooled() -> None:
    async def main() -> None:
        state = ProxyState(asyncio.get_running_loop())
        async with backend() as b, connected(state) as (protocol, reader, writer):
            state.routes[ROUTE] = route_to(b.port)
            assert state.clients == {protocol.inner}
            first = await exchange(reader, writer)
            assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\nok")
            assert b"X-Forwarded-Host: example.test\r\n" in b.heads[0]
            # The upstream connection went back to the state's pool and serves the next one.
            assert len(state.pool.idle[(LOCAL, b.port)]) == 1
            second = await exchange(reader, writer)
            assert second.endswith(b"ok")
            assert (len(b.heads), b.connections) == (2, 1)
            counters = state.routes[ROUTE].backends[0].stats
            assert (counters.requests, counters.inflight) == (2, 0)
        assert not state.clients  # connection_lost left the state's client set

    asyncio.run(main())


def test_closing_state_ends_keep_alive_after_the_response() -> None:
    async def main() -> None:
        state = ProxyState(asyncio.get_running_loop())
        async with backend() as b, connected(state) as (protocol, reader, writer):
            state.routes[ROUTE] = route_to(b.port)
            state.closing = True
            response = await exchange(reader, writer)
            assert b"\r\nConnection: close\r\n" in response
            assert await asyncio.wait_for(reader.read(), STEP) == b""  # closed by the proxy
            await asyncio.wait_for(protocol.lost.wait(), STEP)

    asyncio.run(main())


def test_a_name_missing_from_the_state_routes_is_answered_503() -> None:
    async def main() -> None:
        state = ProxyState(asyncio.get_running_loop())
        async with connected(state) as (_, reader, writer):
            response = await exchange(reader, writer)
            assert response.startswith(b"HTTP/1.1 503 ")

    asyncio.run(main())
