"""Response-queue poisoning: a backend that says more than it was asked must not reach the client.

Each test runs a tiny raw-socket backend whose first connection misbehaves (two responses in one
write, a response followed by junk, bytes sent while the connection sits idle in the pool) and
whose later connections answer normally with `fresh <connection number>`. The client sends its
requests on one keep-alive connection and must get exactly one well-formed response per request,
the next one from a fresh upstream connection, and the counters must add up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from test_proxy_support import (
    LOCAL,
    Request,
    backend,
    connect,
    proxy_with_route,
    read_response,
    run,
    upstreams,
    wait_for,
)

from conveyor.proxy.server import Proxy

EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Evil: yes\r\n\r\nEVIL"
GET = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n"


def _fresh(conn: int) -> bytes:
    body = b"fresh %d" % conn
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@dataclass
class RawUpstream:
    """Reads request heads (no bodies) and writes raw bytes: `first` for the first request of
    connection 0, `_fresh(n)` for everything else."""

    first: bytes
    port: int = 0
    heads: list[tuple[int, bytes]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    closed_by_proxy: set[int] = field(default_factory=set)
    server: asyncio.Server | None = None

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, LOCAL, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()

    @property
    def connections(self) -> int:
        return len(self.writers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(self.writers)
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.closed_by_proxy.add(conn)
                    return
                first = conn == 0 and not any(c == 0 for c, _ in self.heads)
                self.heads.append((conn, head))
                writer.write(self.first if first else _fresh(conn))
        except ConnectionError:
            self.closed_by_proxy.add(conn)

    def route(self) -> list[dict[str, Any]]:
        return [{"color": "blue", "host": LOCAL, "port": self.port, "weight": 100}]


def _stats(proxy: Proxy) -> dict[str, Any]:
    colors: dict[str, Any] = proxy.stats_json()["dev/web"]["colors"]
    return dict(colors["blue"])


async def _assert_nothing_more(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The client stream holds nothing after the responses read: a final request with
    `Connection: close` gets exactly one response and then the end of the stream."""
    writer.write(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    resp = await read_response(reader)
    assert resp.status == 200
    assert resp.body.startswith(b"fresh ")
    assert resp.header("X-Evil") is None
    assert await reader.read() == b""


# The first response (to `GET /0`, or `HEAD /0`), then what the backend sends after it in the
# same write.
FIRST_RESPONSES = {
    "content-length": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", b"first"),
    "chunked": (
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n",
        b"first",
    ),
    "no-content": (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    "not-modified": (b"GET", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", b""),
    "head": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b""),
    "interim-first": (
        b"GET",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
        b"first",
    ),
}
TRAILING = {
    "second-response": EVIL,
    "second-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Evil: yes\r\n\r\n4\r\nEVIL\r\n0\r\n\r\n"
    ),
    "interim": b"HTTP/1.1 103 Early Hints\r\nX-Evil: yes\r\n\r\n",
    "switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\nEVIL",
    "junk": b"GARBAGE\r\n\r\nEVIL",
}


@pytest.mark.parametrize("trailing", TRAILING)
@pytest.mark.parametrize("first", FIRST_RESPONSES)
def test_bytes_after_the_response_in_the_same_write_are_dropped(first: str, trailing: str) -> None:
    method, response, body = FIRST_RESPONSES[first]

    async def scenario() -> None:
        async with (
            RawUpstream(response + TRAILING[trailing]) as up,
            proxy_with_route(up.route()) as (proxy, port),
        ):
            r, w = await connect(port)
            w.write(method + b" /0 HTTP/1.1\r\nHost: a\r\n\r\n")
            if first == "interim-first":
                assert (await r.readuntil(b"\r\n\r\n")) == b"HTTP/1.1 100 Continue\r\n\r\n"
            resp = await read_response(r, method.decode())
            assert resp.status == int(response.rsplit(b"HTTP/1.1 ", 1)[1][:3])
            assert resp.body == body
            assert resp.header("X-Evil") is None
            assert resp.header("Connection") is None  # the client connection stays open
            # The misbehaving upstream connection is closed, never pooled.
            await wait_for(lambda: 0 in up.closed_by_proxy)

            w.write(GET % 1)
            resp = await read_response(r)
            assert resp.status == 200
            assert resp.body == b"fresh 1"
            assert resp.header("X-Evil") is None
            await _assert_nothing_more(r, w)
            w.close()

            assert up.connections == 2
            assert [c for c, _ in up.heads] == [0, 1, 1]
            stats = _stats(proxy)
            assert stats["requests"] == 3
            expected = {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 0}
            expected[_class(response)] += 1
            assert stats["responses"] == expected
            assert stats["inflight"] == 0
            assert stats["upstream_errors"] == 0

    run(scenario())


def _class(response: bytes) -> str:
    return response.rsplit(b"HTTP/1.1 ", 1)[1][:1].decode() + "xx"


def test_unsolicited_bytes_on_an_idle_pooled_connection_drop_it() -> None:
    async def scenario() -> None:
        async with (
            RawUpstream(_fresh(0)) as up,
            proxy_with_route(up.route()) as (proxy, port),
        ):
            r, w = await connect(port)
            w.write(GET % 0)
            assert (await read_response(r)).body == b"fresh 0"
            # The response is complete, so the connection is idle in the pool now.
            assert len(proxy.state.pool.idle[(LOCAL, up.port)]) == 1
            up.writers[0].write(EVIL)
            await wait_for(lambda: 0 in up.closed_by_proxy)
            assert proxy.state.pool.take((LOCAL, up.port)) is None

            w.write(GET % 1)
            resp = await read_response(r)
            assert resp.body == b"fresh 1"
            assert resp.header("X-Evil") is None
            await _assert_nothing_more(r, w)
            w.close()
            assert up.connections == 2
            stats = _stats(proxy)
            assert stats["requests"] == 3
            assert stats["responses"]["2xx"] == 3
            assert stats["inflight"] == 0
            assert stats["upstream_errors"] == 0

    run(scenario())


def test_pipelined_requests_each_get_their_own_response() -> None:
    # Two requests pipelined by the client: the proxy sends the second upstream only after the
    # first is answered, so a second response offered early for it is never taken as its answer.
    async def scenario() -> None:
        async with (
            RawUpstream(_fresh(0) + EVIL) as up,
            proxy_with_route(up.route()) as (proxy, port),
        ):
            r, w = await connect(port)
            w.write((GET % 0) + (GET % 1))
            assert (await read_response(r)).body == b"fresh 0"
            assert (await read_response(r)).body == b"fresh 1"
            await _assert_nothing_more(r, w)
            w.close()
            assert _stats(proxy)["responses"]["2xx"] == 3

    run(scenario())


def test_close_delimited_response_streams_until_close_and_is_not_reused() -> None:
    # Without framing, everything up to the close is body, even bytes that look like a response.
    async def scenario() -> None:
        first = b"HTTP/1.1 200 OK\r\n\r\nbody " + EVIL

        async def close_after_first() -> None:
            await wait_for(lambda: up.connections == 1 and bool(up.heads))
            up.writers[0].close()

        async with (
            RawUpstream(first) as up,
            proxy_with_route(up.route()) as (proxy, port),
        ):
            r, w = await connect(port)
            closer = asyncio.get_running_loop().create_task(close_after_first())
            w.write(GET % 0)
            resp = await read_response(r)
            await closer
            assert resp.header("Transfer-Encoding") == "chunked"
            assert resp.body == b"body " + EVIL
            w.write(GET % 1)
            assert (await read_response(r)).body == b"fresh 1"
            await _assert_nothing_more(r, w)
            w.close()
            assert up.connections == 2
            stats = _stats(proxy)
            assert stats["responses"]["2xx"] == 3
            assert stats["inflight"] == 0

    run(scenario())


def test_upgrade_on_a_reused_connection_after_a_chunked_response() -> None:
    # The end of the chunked response before it must not be written again after the 101: the
    # tunnel carries exactly the backend's bytes.
    async def handler(
        req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if req.header("Upgrade") is None:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            )
            return False
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ws\r\n\r\n"
        )
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        return True

    async def scenario() -> None:
        async with (
            upstreams(("blue", handler)) as (up,),
            proxy_with_route([backend(up)]) as (proxy, port),
        ):
            r, w = await connect(port)
            w.write(GET % 0)
            assert (await read_response(r)).body == b"ok"
            w.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: ws\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            w.close()
            assert up.connections == 1  # the upgrade did go over the pooled connection
            stats = _stats(proxy)
            assert stats["responses"]["1xx"] == 1
            assert stats["responses"]["2xx"] == 1

    run(scenario())
