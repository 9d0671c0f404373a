"""Client connections: strict request parsing, forwarding, keep-alive and pipelining.

Requests are parsed by httptools (llhttp in strict mode, which already refuses obs-fold,
whitespace before the colon, invalid chunk sizes, bad Transfer-Encoding...). On top of it this
module enforces the framing rules that matter against request smuggling itself, so that they
do not depend on the parser version: one Content-Length at most and digits only, one
Transfer-Encoding at most and exactly "chunked", never both, one Host. Plus the size limits.
Anything refused is answered 400/414/431 with `Connection: close` before a single byte goes
upstream: dispatch happens after the parser has accepted the whole read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final

import httptools

from conveyor.proxy.exchange import Exchange
from conveyor.proxy.flow import PAUSE_PIPELINE
from conveyor.proxy.model import Limits
from conveyor.proxy.responses import canned

if TYPE_CHECKING:
    from conveyor.proxy.state import ProxyState

_DEFAULT_LIMITS: Final = Limits()
_CRLF: Final = b"\r\n"
# Request headers the proxy looks at; all others are forwarded untouched.
_SPECIAL: Final = frozenset(
    (
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"connection",
        b"upgrade",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    )
)
# Connection tokens with a meaning of their own; any other token names a hop-by-hop header.
_CONNECTION_OPTIONS: Final = frozenset((b"close", b"keep-alive", b"upgrade"))
_CHUNK_END: Final = b"0\r\n\r\n"
# How long a refused client may go on sending before its connection is closed regardless.
LINGER = 2.0


class Reject(Exception):
    """Raised from a parser callback to refuse the request."""


class ClientProtocol(asyncio.Protocol):
    def __init__(self, state: ProxyState, name: str) -> None:
        self.state = state
        self.name = name
        self.transport: asyncio.Transport
        self.parser = httptools.HttpRequestParser(self)
        self.limits = _DEFAULT_LIMITS
        self.queue: deque[Exchange] = deque()
        self.receiving: Exchange | None = None  # the exchange whose request body is being read
        self.tunnel: Exchange | None = None
        self.upgrading: Exchange | None = None
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.rejected = False
        # Set before they are read: http11 by on_headers_complete, forwarded by connection_made.
        self.http11: bool
        self.forwarded: bytes
        # When the proxy's sweep first saw this connection idle (perf_counter); 0.0: not idle
        # since the last request began. See Proxy._sweep.
        self.idle_since = 0.0
        # A request head is on its way: from the parser's message begin to headers complete. A
        # new connection starts in that state (its first request is expected), so one that sends
        # nothing within header_timeout is closed too. `head_since` is the sweep's stamp, like
        # `idle_since`: no clock read per request.
        self.head_begun = True
        self.head_since = 0.0
        # Per-request parse state. data_received reads in_head and head_raw before the parser's
        # first callback; the rest is set by on_message_begin, which precedes every other one.
        self.in_head = True
        self.head_raw = 0
        self.url: bytes
        self.lines: list[bytes]
        self.nheaders: int
        self.header_bytes: int
        self.content_length: bytes | None
        self.chunked: bool
        self.host: bytes | None
        self.xff: bytes | None
        self.connection: bytes | None
        self.upgrade_value = b""
        self.reject_status = 400

    # -- asyncio -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        ip = peer[0].encode() if isinstance(peer, tuple) else b"unknown"
        self.forwarded = b"X-Forwarded-For: " + ip + b"\r\nX-Forwarded-Proto: http\r\n"
        self.state.clients.add(self)
        route = self.state.routes.get(self.name)
        if route is not None:
            self.limits = route.limits

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.clients.discard(self)
        for ex in self.queue:
            ex.abort()
        self.queue.clear()
        if self.tunnel is not None:
            self.tunnel.abort()
        if self.upgrading is not None:
            self.upgrading.abort()
        self.receiving = None

    def pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        # The client reads slower than the backend writes: stop reading the backend.
        self.write_paused = True
        ex = self.tunnel or (self.queue[0] if self.queue else None)
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.tunnel or (self.queue[0] if self.queue else None)
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel or self.upgrading
        if tunnel is not None:
            # After an Upgrade request everything is opaque bytes for the backend.
            tunnel.send(data)
            tunnel.flush()
            return
        if self.rejected:
            return
        if self.in_head:
            self.head_raw += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex = self.receiving
            if ex is None or not ex.upgrade:
                self.reject(400)
                return
            self.receiving = None
            self.upgrading = ex
            rest = data[exc.args[0] :]
            if rest:
                ex.send(rest)
        except httptools.HttpParserError:
            self.reject(self.reject_status)
            return
        limits = self.limits
        if self.in_head and self.head_raw > limits.max_header_size + limits.max_request_line:
            # One header line that never ends: httptools would buffer it without bound.
            self.reject(431)
            return
        queue = self.queue
        if queue:
            ex = queue[0]
            if not ex.started:
                ex.dispatch()
            else:
                queue[-1].flush()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # head_raw is not reset here: it counts from the end of the previous message.
        self.idle_since = 0.0
        self.head_begun = True
        self.in_head = True
        self.url = b""
        self.lines = []
        self.nheaders = 0
        self.header_bytes = 0
        self.content_length = None
        self.chunked = False
        self.host = None
        self.xff = None
        self.connection = None
        route = self.state.routes.get(self.name)
        if route is not None:
            self.limits = route.limits

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_request_line:
            self.reject_status = 414
            raise Reject

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # chunked trailer fields: dropped (they are optional by definition)
        self.nheaders += 1
        self.header_bytes += len(name) + len(value) + 4
        limits = self.limits
        if self.nheaders > limits.max_headers or self.header_bytes > limits.max_header_size:
            self.reject_status = 431
            raise Reject
        lname = name.lower()
        if lname not in _SPECIAL:
            self.lines.append(name + b": " + value + _CRLF)
            return
        if lname == b"host":  # first: every HTTP/1.1 request has one
            if self.host is not None:
                raise Reject
            self.host = value
            self.lines.append(name + b": " + value + _CRLF)
        elif lname == b"content-length":
            if self.content_length is not None or not value.isdigit():
                raise Reject
            self.content_length = value
        elif lname == b"transfer-encoding":
            if self.chunked or value.strip().lower() != b"chunked":
                raise Reject
            self.chunked = True
        elif lname == b"connection":
            self.connection = value if self.connection is None else self.connection + b"," + value
        elif lname == b"upgrade":
            self.upgrade_value = value
        elif lname == b"x-forwarded-for":
            self.xff = value if self.xff is None else self.xff + b", " + value
        # keep-alive, proxy-connection, te, trailer: hop-by-hop, dropped.
        # x-forwarded-proto/-host: replaced by ours (this proxy is the edge).

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_begun = False
        self.head_since = 0.0
        parser = self.parser
        if self.chunked and self.content_length is not None:
            raise Reject
        method = parser.get_method()
        if method == b"CONNECT":
            raise Reject
        self.http11 = http11 = parser.get_http_version() == "1.1"
        if http11 and self.host is None:
            raise Reject
        upgrade = parser.should_upgrade()
        lines = self.lines
        if self.connection is not None:
            lines = self._drop_connection_headers(lines)
        parts = [method, b" ", self.url, b" HTTP/1.1\r\n", *lines]
        host = self.host
        if self.xff is None:
            parts.append(self.forwarded)
        else:
            parts.append(b"X-Forwarded-For: " + self.xff + b", " + self.forwarded[17:])
        if host is not None:
            parts += (b"X-Forwarded-Host: ", host, _CRLF)
        if upgrade:
            parts.append(b"Connection: Upgrade\r\nUpgrade: " + self.upgrade_value + _CRLF)
        if self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif self.content_length is not None:
            parts.append(b"Content-Length: " + self.content_length + _CRLF)
        parts.append(_CRLF)
        keep_alive = parser.should_keep_alive() and not self.state.closing
        ex = Exchange(self, method, b"".join(parts), keep_alive, upgrade)
        self.receiving = ex
        self.queue.append(ex)
        if len(self.queue) > 1:
            self.pause(PAUSE_PIPELINE)

    def _drop_connection_headers(self, lines: list[bytes]) -> list[bytes]:
        """Drop the headers that the Connection header names (hop-by-hop by declaration)."""
        assert self.connection is not None
        names = {t.strip().lower() for t in self.connection.split(b",")} - _CONNECTION_OPTIONS
        if not names:
            return lines
        return [ln for ln in lines if ln.split(b":", 1)[0].lower() not in names]

    def on_body(self, body: bytes) -> None:
        ex = self.receiving
        if ex is None:
            return
        if self.chunked:
            ex.send(b"%x\r\n" % len(body))
            ex.send(body)
            ex.send(_CRLF)
        else:
            ex.send(body)

    def on_message_complete(self) -> None:
        ex = self.receiving
        if ex is None:
            return
        if self.chunked:
            ex.send(_CHUNK_END)
        ex.request_done = True
        if not ex.upgrade:
            self.receiving = None
        self.in_head = True
        self.head_raw = 0

    # -- outcomes ------------------------------------------------------------------------------

    def reject(self, status: int) -> None:
        """Refuse the request being read; nothing of it has been (or will be) sent upstream."""
        if self.rejected or self.closed:
            return
        self.rejected = True
        active = self.queue[0] if self.queue else None
        responded = active is not None and active.responded
        for ex in self.queue:
            ex.abort()
        self.queue.clear()
        self.receiving = None
        if not responded:
            self.transport.write(canned(status, False))
        self.linger()

    def linger(self) -> None:
        """Close after a refusal without destroying the answer (nginx's lingering close).

        The client may still be sending the request we refused. Closing with its bytes unread
        makes the kernel reset the connection, and a reset can reach the client before it has
        read the answer. So: half-close (the client reads the answer, then end of stream), drop
        whatever still arrives (data_received ignores a rejected client), and close when the
        client does, or after LINGER seconds at the most.
        """
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            self.state.loop.call_later(LINGER, transport.close)
        else:
            transport.close()

    @property
    def receiving_head(self) -> bool:
        """A request head has begun (or a new connection awaits its first) and is not complete."""
        return (
            self.in_head
            and (self.head_begun or self.head_raw > 0)
            and self.tunnel is None
            and self.upgrading is None
            and not self.rejected
        )

    def head_timeout(self) -> None:
        """The request head did not arrive whole within header_timeout (slowloris protection)."""
        if self.queue or not self.head_raw:
            # Nothing was received (a silent new connection), or an earlier request is still
            # being answered and a 408 cannot take the place of its response: just close.
            self.rejected = True
            self.transport.close()
            return
        self.reject(408)

    def exchange_done(self, ex: Exchange) -> None:
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if self.closed:
            return
        # Draining for a reload (`linger`), a connection whose response promised keep-alive
        # stays open: its next request is answered with `Connection: close`, and the drain
        # closes it if it stays idle. Closing it here would race a request the client may
        # already be sending on it. On shutdown it is closed at once.
        state = self.state
        if not ex.keep_alive or not ex.request_done or (state.closing and not state.linger):
            self.transport.close()
            return
        if queue:
            nxt = queue[0]
            if len(queue) == 1:
                self.resume(PAUSE_PIPELINE)
            nxt.dispatch()

    def start_tunnel(self, ex: Exchange) -> None:
        self.upgrading = None
        self.tunnel = ex
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        self.resume(PAUSE_PIPELINE)

    @property
    def idle(self) -> bool:
        return not self.queue and self.tunnel is None and self.head_raw == 0
