"""ClientProtocol's own rules, driven in-process: no socket, no Proxy.

Both sides of a request get a `Wire`, a transport that records what a protocol does to it
(writes, pauses, resumes, end of stream, close): the transport is the protocol's in-process
interface, as in uvicorn's protocol tests. The backend connection is a real `UpstreamProtocol`
waiting in the pool, so a request is dispatched synchronously and its response is whatever the
test feeds the upstream side. Each rule here was found unpinned by the mutation check of
proxy/downstream.py (docs/internals.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.proxy import downstream
from conveyor.proxy.downstream import ClientProtocol, Reject
from conveyor.proxy.model import Limits, Route, parse_backends
from conveyor.proxy.responses import canned
from conveyor.proxy.server import Proxy
from conveyor.proxy.state import ProxyState
from conveyor.proxy.upstream import UpstreamProtocol

LOCAL = "127.0.0.1"
PORT = 8000  # never connected to: the backend connection is put in the pool by the test
ROUTE = "dev/web"
PEER = ("198.51.100.7", 40000)
FORWARDED = b"X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: http\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Wire(asyncio.Transport):
    """A transport that records what its protocol does to it."""

    def __init__(self, peer: object = PEER, eof: bool = True) -> None:
        super().__init__()
        self.peer = peer
        self.eof_supported = eof
        self.data = b""
        self.calls: list[str] = []  # "pause" / "resume", in order
        self.eof = False
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += bytes(data)

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def can_write_eof(self) -> bool:
        return self.eof_supported

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def route(limits: Limits) -> Route:
    backends = parse_backends([{"color": "blue", "host": LOCAL, "port": PORT, "weight": 100}], {})
    return Route(ROUTE, (LOCAL, 1), backends, limits)


class Link:
    """A client connection on its own ProxyState, with a route to one backend."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limits: Limits | None = None,
        peer: object = PEER,
        eof: bool = True,
        state: ProxyState | None = None,
    ) -> None:
        self.state = state or ProxyState(loop)
        self.state.routes[ROUTE] = route(limits or Limits())
        self.wire = Wire(peer, eof)
        self.client = ClientProtocol(self.state, ROUTE)
        self.client.connection_made(self.wire)

    def backend(self) -> tuple[UpstreamProtocol, Wire]:
        """A backend connection in the pool: the next request is sent on it at once."""
        up = UpstreamProtocol(self.state, LOCAL, PORT)
        wire = Wire()
        up.connection_made(wire)
        self.state.pool.put(up)
        return up, wire

    def send(self, data: bytes) -> None:
        self.client.data_received(data)

    @property
    def status(self) -> bytes:
        """The status line's code of the first answer the client got."""
        return self.wire.data[9:12]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # Not running: everything here is synchronous, except the lingering close's timer.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def get(target: bytes = b"/", extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n"


# -- what goes upstream ---------------------------------------------------------------------


def test_the_forwarded_head_is_exact(loop: asyncio.AbstractEventLoop) -> None:
    link = Link(loop)
    _, wire = link.backend()
    link.send(
        b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 203.0.113.1\r\n"
        b"Accept: */*\r\nx-forwarded-for: 203.0.113.2\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: elsewhere\r\nKeep-Alive: 5\r\n\r\n"
    )
    # Earlier hops' addresses kept in order, ours last; proto and host are ours (the edge).
    assert wire.data == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n"
        b"X-Forwarded-For: 203.0.113.1, 203.0.113.2, 198.51.100.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: example.test\r\n\r\n"
    )


def test_an_http10_request_goes_up_as_http11_with_our_forwarded_headers(
    loop: asyncio.AbstractEventLoop,
) -> None:
    link = Link(loop)
    _, wire = link.backend()
    link.send(b"GET / HTTP/1.0\r\n\r\n")
    assert wire.data == b"GET / HTTP/1.1\r\n" + FORWARDED + b"\r\n"


@pytest.mark.parametrize("peer", [None, "/run/proxy.sock"], ids=["none", "unix-socket"])
def test_a_peer_without_an_address_is_forwarded_as_unknown(
    loop: asyncio.AbstractEventLoop, peer: object
) -> None:
    link = Link(loop, peer=peer)
    _, wire = link.backend()
    link.send(get())
    assert b"\r\nX-Forwarded-For: unknown\r\nX-Forwarded-Proto: http\r\n" in wire.data


def test_a_target_split_across_reads_is_forwarded_whole(loop: asyncio.AbstractEventLoop) -> None:
    link = Link(loop)
    _, wire = link.backend()
    link.send(b"GET /ab")
    link.send(b"cd?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert wire.data.startswith(b"GET /abcd?x=1 HTTP/1.1\r\nHost: h\r\n")


def test_a_header_named_by_connection_is_dropped_even_with_a_colon_in_its_value(
    loop: asyncio.AbstractEventLoop,
) -> None:
    link = Link(loop)
    _, wire = link.backend()
    link.send(get(extra=b"Connection: X-Secret\r\nX-Secret: a:b\r\nX-Kept: c:d\r\n"))
    assert b"X-Secret" not in wire.data
    assert b"\r\nX-Kept: c:d\r\n" in wire.data


def test_bodies_are_forwarded_with_their_framing(loop: asyncio.AbstractEventLoop) -> None:
    link = Link(loop)
    up, wire = link.backend()
    link.send(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
    head = b"POST /u HTTP/1.1\r\nHost: h\r\n" + FORWARDED + b"X-Forwarded-Host: h\r\n"
    assert wire.data == head + b"Content-Length: 5\r\n\r\nhello"
    up.data_received(OK)
    wire.data = b""
    # Chunked (its name in any case): re-chunked as read, one chunk per piece the parser gives.
    link.send(
        b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"5\r\nhello\r\nb;ext=1\r\nhello world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    assert wire.data == (
        head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nb\r\nhello world\r\n0\r\n\r\n"
    )
    up.data_received(OK)
    assert link.wire.data == OK + OK


def test_a_head_request_ends_with_its_response_head(loop: asyncio.AbstractEventLoop) -> None:
    link = Link(loop)
    up, _ = link.backend()
    link.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    # No body follows a HEAD response whatever its Content-Length says.
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert link.wire.data == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert link.client.idle and not link.wire.closed


# -- the framing rules, without the parser's help ---------------------------------------------


def test_framing_rules_hold_whatever_the_parser_lets_through(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # httptools refuses these too; the proxy's own rules must not depend on its version.
    client = Link(loop).client
    client.on_message_begin()
    client.on_header(b"Content-Length", b"5")
    with pytest.raises(Reject):
        client.on_header(b"Content-Length", b"5")
    client.on_message_begin()
    with pytest.raises(Reject):
        client.on_header(b"Content-Length", b"+5")
    client.on_message_begin()
    client.on_header(b"Transfer-Encoding", b"chunked")
    with pytest.raises(Reject):
        client.on_header(b"Transfer-Encoding", b"chunked")
    client.on_message_begin()
    with pytest.raises(Reject):
        client.on_header(b"Transfer-Encoding", b"gzip, chunked")
    client.on_message_begin()
    client.on_header(b"Transfer-Encoding", b"chunked")
    client.on_header(b"Content-Length", b"5")
    with pytest.raises(Reject):
        client.on_headers_complete()


# -- limits -----------------------------------------------------------------------------------


def test_a_target_of_exactly_max_request_line_is_accepted(
    loop: asyncio.AbstractEventLoop,
) -> None:
    limits = Limits(max_request_line=20)
    within = Link(loop, limits)
    _, wire = within.backend()
    within.send(get(b"/" + b"a" * 19))
    assert wire.data.startswith(b"GET /" + b"a" * 19 + b" ") and not within.wire.data
    over = Link(loop, limits)
    over.send(get(b"/" + b"a" * 20))
    assert over.status == b"414"


def test_headers_of_exactly_max_header_size_are_accepted(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # Each header counts name + value + 4 (": " and CRLF): Host: h is 9, X-A: <20> is 27.
    request = get(extra=b"X-A: " + b"v" * 20 + b"\r\n")
    within = Link(loop, Limits(max_header_size=36))
    _, wire = within.backend()
    within.send(request)
    assert wire.data and not within.wire.data
    over = Link(loop, Limits(max_header_size=35))
    over.send(request)
    assert over.status == b"431"


def test_a_header_that_never_ends_is_refused_once_over_the_bound(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # The parser holds an unfinished header without calling back: the proxy counts raw bytes,
    # across reads, up to max_header_size + max_request_line.
    link = Link(loop, Limits(max_request_line=100, max_header_size=1000))
    start = b"GET / HTTP/1.1\r\nX-Long: "
    link.send(start)
    sent = len(start)
    while sent < 1100:
        piece = b"a" * min(100, 1100 - sent)
        link.send(piece)
        sent += len(piece)
    assert not link.wire.data  # exactly at the bound
    link.send(b"a")
    assert link.status == b"431"


def test_the_bound_on_an_unfinished_head_counts_from_the_previous_request(
    loop: asyncio.AbstractEventLoop,
) -> None:
    link = Link(loop, Limits(max_request_line=100, max_header_size=1000))
    up, _ = link.backend()
    link.send(get())
    up.data_received(OK)
    link.send(b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 1100)
    assert link.wire.data == OK + canned(431, False)


def test_each_request_gets_the_limits_of_the_route_as_it_is_then(
    loop: asyncio.AbstractEventLoop,
) -> None:
    link = Link(loop)  # connected under the default limits
    link.state.routes[ROUTE] = route(Limits(max_headers=1))
    link.send(get(extra=b"X-A: 1\r\n"))
    assert link.status == b"431"


# -- pipelining and flow control ----------------------------------------------------------


def test_reading_pauses_once_and_resumes_when_every_reason_is_gone(
    loop: asyncio.AbstractEventLoop,
) -> None:
    link = Link(loop)
    up, wire = link.backend()
    link.send(get(b"/1") + get(b"/2"))
    assert link.wire.calls == ["pause"]  # the second request waits for the first
    up.pause_writing()  # and the backend's write buffer is full
    up.resume_writing()
    assert link.wire.calls == ["pause"]  # still waiting for the first response
    up.data_received(OK)
    assert link.wire.calls == ["pause", "resume"]
    assert wire.data.count(b"GET /2 ") == 1  # sent on the same backend connection
    up.data_received(OK)
    assert link.wire.data == OK + OK
    assert link.wire.calls == ["pause", "resume"]


def test_a_slow_client_pauses_the_backend_connection(loop: asyncio.AbstractEventLoop) -> None:
    link = Link(loop)
    up, wire = link.backend()
    # Between requests nothing is paused, and nothing breaks.
    link.client.pause_writing()
    link.client.resume_writing()
    link.send(get(b"/1"))
    assert wire.calls == []
    link.client.pause_writing()
    assert wire.calls == ["pause"]
    link.client.resume_writing()
    assert wire.calls == ["pause", "resume"]
    up.data_received(OK)
    # Paused while idle: the next request's backend connection starts paused.
    link.client.pause_writing()
    link.send(get(b"/2"))
    assert wire.calls == ["pause", "resume", "pause"]
    link.client.resume_writing()
    up.data_received(OK)
    assert link.wire.data == OK + OK


def test_a_drain_begun_during_a_response_closes_the_connection_after_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    link = Link(loop)
    up, _ = link.backend()
    link.send(get())
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    link.state.closing = True
    assert not link.wire.closed
    up.data_received(b"ok")
    assert link.wire.data == OK
    assert link.wire.closed


# -- upgrades ---------------------------------------------------------------------------------


def test_an_upgrade_becomes_a_tunnel_both_ways(loop: asyncio.AbstractEventLoop) -> None:
    link = Link(loop)
    up, wire = link.backend()
    link.send(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nEARLY"
    )
    assert wire.data == (
        b"GET /ws HTTP/1.1\r\nHost: h\r\n" + FORWARDED + b"X-Forwarded-Host: h\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nEARLY"
    )
    link.send(b"MORE")  # before the 101: for the backend too, never for the parser
    assert wire.data.endswith(b"EARLYMORE")
    switching = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket"
    up.data_received(switching + b"\r\n\r\nHELLO")
    assert link.wire.data == switching + b"\r\n\r\nHELLO"
    link.send(b"AFTER")
    assert wire.data.endswith(b"EARLYMOREAFTER")
    # A slow client pauses the tunnel's backend side too.
    link.client.pause_writing()
    link.client.resume_writing()
    assert wire.calls == ["pause", "resume"]
    assert link.wire.calls == []  # the client was never paused, so never resumed
    link.client.connection_lost(None)
    assert wire.closed


def test_a_closed_client_is_neither_paused_nor_resumed(loop: asyncio.AbstractEventLoop) -> None:
    # A tunnel's backend side may still report its write buffer after the client is gone.
    link = Link(loop)
    up, _ = link.backend()
    link.send(get(b"/ws", b"Connection: Upgrade\r\nUpgrade: websocket\r\n"))
    up.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert link.client.tunnel is not None
    up.pause_writing()
    assert link.wire.calls == ["pause"]
    link.client.connection_lost(None)
    up.resume_writing()
    up.pause_writing()
    assert link.wire.calls == ["pause"]


# -- refusals ---------------------------------------------------------------------------------


def test_a_refused_client_gets_one_answer_however_much_it_sends(
    loop: asyncio.AbstractEventLoop,
) -> None:
    link = Link(loop)
    link.send(b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n")
    link.send(b"more garbage\r\n\r\n")
    link.send(get())
    assert link.wire.data == canned(400, False)
    assert link.wire.eof


def test_a_refusal_during_a_response_cuts_it_without_a_400(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # A 400 in the middle of the previous request's response would be taken as part of it.
    link = Link(loop)
    up, wire = link.backend()
    link.send(get(b"/1"))
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    link.send(b"BAD\r\n\r\n")
    assert link.wire.data == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    assert link.wire.eof and wire.closed


def test_a_refusal_before_any_response_is_answered(loop: asyncio.AbstractEventLoop) -> None:
    link = Link(loop)
    _, wire = link.backend()
    link.send(get(b"/1"))
    link.send(b"BAD\r\n\r\n")  # the first request was sent, its answer has not come
    assert link.wire.data == canned(400, False)
    assert wire.closed


def test_a_refused_connection_is_closed_after_the_linger(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downstream, "LINGER", 0.0)
    link = Link(loop)
    link.send(b"BAD\r\n\r\n")
    assert link.wire.eof and not link.wire.closed  # the client reads the answer first

    async def closed() -> None:
        while not link.wire.closed:
            await asyncio.sleep(0)

    loop.run_until_complete(asyncio.wait_for(closed(), 10.0))


def test_a_transport_without_half_close_is_closed_at_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    link = Link(loop, eof=False)
    link.send(b"BAD\r\n\r\n")
    assert link.status == b"400" and link.wire.closed


# -- what the sweep reads ---------------------------------------------------------------------


def test_a_head_begun_in_the_same_read_as_the_previous_request_is_timed(
    loop: asyncio.AbstractEventLoop,
) -> None:
    link = Link(loop)
    link.backend()
    link.send(get(b"/1") + b"GET /2 HTTP/1.1\r\nHo")
    assert link.client.receiving_head


def test_a_complete_head_clears_the_sweeps_stamp(loop: asyncio.AbstractEventLoop) -> None:
    link = Link(loop)
    link.backend()
    link.send(b"GET / HTTP/1.1\r\n")
    link.client.head_since = 123.0  # as the sweep stamps a head in progress
    link.send(b"Host: h\r\n\r\n")
    assert link.client.head_since == 0.0


def test_a_head_timed_out_behind_a_response_gets_no_408_after_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # The second request's head is late while the first is being answered: the connection is
    # closed, and the first response may still go out before it is gone. No 408 may follow it,
    # however many sweeps see the connection meanwhile.
    proxy = Proxy(loop)
    link = Link(loop, Limits(header_timeout=0.0), state=proxy.state)
    up, _ = link.backend()
    link.send(get(b"/1"))
    link.send(b"GET /2 HTTP/1.1\r\nHo")
    proxy._sweep()  # stamps the head in progress
    proxy._sweep()  # over header_timeout
    assert link.wire.closed and not link.wire.data
    up.data_received(OK)
    proxy._sweep()
    assert link.wire.data == OK
    proxy._sweeper.cancel()
