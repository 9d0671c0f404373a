"""Connections to the backends: the response parser and the keep-alive pool."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

import httptools

from conveyor.proxy.flow import PAUSE_UPSTREAM
from conveyor.proxy.responses import STATUS_BYTES

if TYPE_CHECKING:
    from conveyor.proxy.exchange import Exchange
    from conveyor.proxy.state import ProxyState

# Response headers that describe this hop only; the proxy writes its own framing/Connection.
_HOP: Final = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
    )
)
_CHUNK_END: Final = b"0\r\n\r\n"
_CRLF: Final = b"\r\n"
# Framing of the response body towards the client.
RAW: Final = 0  # bytes as they come (Content-Length, or HTTP/1.0 client reading until close)
RECHUNK: Final = 1  # re-encoded as chunked (chunked or close-delimited upstream, HTTP/1.1 client)
# The response to the request in flight is complete (or a HEAD response's head is): whatever the
# parser still produces on this connection is dropped, never written to the client.
DROP: Final = 2
MAX_IDLE_PER_BACKEND: Final = 256


class UpstreamProtocol(asyncio.Protocol):
    """One TCP connection to a backend, carrying one exchange at a time."""

    def __init__(self, state: ProxyState, host: str, port: int) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.key = (host, port)
        self.transport: asyncio.Transport
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.reading_paused = False
        self.out: list[bytes] = []
        # Per-response state, reset by start() (and after an interim 1xx head): there is no
        # on_message_begin callback, one Python call less per response.
        self.lines: list[bytes] = []
        self.reason = b""
        self.upgrade_value = b""
        self.content_length: bytes | None = None
        self.chunked = False
        self.got_bytes = False
        self.head_done = False
        self.interim = False
        self.framing = RAW
        self.until_close = False
        self.complete = False
        self.keep_alive = False
        self.status = 0

    # -- asyncio -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.lines = []
        self.reason = b""
        self.content_length = None
        self.chunked = False
        self.got_bytes = False
        self.head_done = False
        self.complete = False
        self.until_close = False
        if self.reading_paused:
            self.resume_reading()

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.pause(PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.resume(PAUSE_UPSTREAM)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # Nothing was asked: a backend talking out of turn cannot be trusted with a request
            # (its bytes would be taken as the answer to the next one). Out of the pool now, not
            # at connection_lost, so that no request is sent on it meanwhile.
            self.closed = True
            self.state.pool.discard(self)
            self.transport.close()
            return
        if ex.tunnel:
            ex.client.transport.write(data)
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._flush(ex)
            if self.status == 101 and ex.upgrade:
                ex.start_tunnel()
                rest = data[exc.args[0] :]
                if rest:
                    ex.client.transport.write(rest)
            elif self.complete:
                # A 101 after the complete response: not asked for, not passed on.
                ex.response_complete(self.status, False)
            else:
                ex.upstream_lost(True)
            return
        except httptools.HttpParserError:
            self._flush(ex)
            if self.complete:
                # Garbage after the complete response: the response stands, the connection
                # goes.
                ex.response_complete(self.status, False)
            else:
                ex.upstream_lost(True)
            return
        out = self.out
        if out:  # _flush(), inlined: this is every response's path
            ex.client.transport.write(b"".join(out))
            out.clear()
        if self.complete:
            ex.response_complete(self.status, self.keep_alive and not self.until_close)

    def _flush(self, ex: Exchange) -> None:
        out = self.out
        if out:
            ex.client.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is None:
            self.state.pool.discard(self)
            return
        self.exchange = None
        if ex.tunnel:
            ex.client.transport.close()
            return
        if self.until_close and self.head_done and not self.complete:
            # A response delimited by the end of the connection has just ended.
            if self.framing == RECHUNK:
                ex.client.transport.write(_CHUNK_END)
            self.complete = True
            ex.response_complete(self.status, False)
            return
        ex.upstream_lost(self.got_bytes)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # trailer fields: not forwarded
        lname = name.lower()
        if lname in _HOP:
            if lname == b"content-length":
                self.content_length = value
            elif lname == b"transfer-encoding":
                self.chunked = value.lower().rstrip().endswith(b"chunked")
            elif lname == b"upgrade":
                self.upgrade_value = value
            return
        self.lines.append(name + b": " + value + _CRLF)

    def on_headers_complete(self) -> None:
        if self.complete:
            # A second response to one request (in the same read as the first): dropped, and
            # the connection with it, or it would answer the next request sent on it.
            self.keep_alive = False
            return
        ex = self.exchange
        assert ex is not None
        status = self.parser.get_status_code()
        self.status = status
        client = ex.client
        if status < 200 and status != 101:
            # Interim response (100 Continue, 103 Early Hints): pass on to HTTP/1.1 clients.
            self.interim = True
            if client.http11:
                self.out.append(
                    b"HTTP/1.1 %s %s\r\n%s\r\n"
                    % (STATUS_BYTES[status], self.reason, b"".join(self.lines))
                )
            # The final response's head follows in the same exchange.
            self.lines = []
            self.reason = b""
            self.content_length = None
            self.chunked = False
            return
        self.head_done = True
        # Asked now: after on_message_complete llhttp has already reset its flags.
        self.keep_alive = self.parser.should_keep_alive()
        # The response has started: no 504 any more, and what was sent can no longer be
        # replayed.
        ex.deadline = 0.0
        ex.replay = None
        lines = self.lines
        parts = [b"HTTP/1.1 ", STATUS_BYTES[status], b" ", self.reason, _CRLF, *lines]
        if status == 101:
            parts.append(b"Connection: Upgrade\r\nUpgrade: " + self.upgrade_value + b"\r\n\r\n")
            self.out.append(b"".join(parts))
            ex.responded = True
            return
        if ex.upgrade or self.state.closing:
            ex.keep_alive = False
        self.framing = RAW
        if ex.method == b"HEAD":
            # httptools cannot be told that a HEAD response has no body: take the head as the
            # whole response and never reuse this connection (its parser state is unusable).
            if self.content_length is not None:
                parts.append(b"Content-Length: " + self.content_length + _CRLF)
            self.complete = True
            self.until_close = True
            self.framing = DROP
        elif status == 204 or status == 304:
            pass
        elif self.content_length is not None and not self.chunked:
            parts.append(b"Content-Length: " + self.content_length + _CRLF)
        else:
            # Chunked or delimited by the end of the connection.
            self.until_close = not self.chunked
            if client.http11:
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self.framing = RECHUNK
            else:
                ex.keep_alive = False
        if ex.set_cookie is not None:
            parts.append(ex.set_cookie)
        if ex.keep_alive:
            if not client.http11:
                parts.append(b"Connection: keep-alive\r\n")
        else:
            parts.append(b"Connection: close\r\n")
        parts.append(_CRLF)
        # Joined with the body (when it came in the same read) into one write by _flush.
        self.out += parts
        ex.responded = True

    def on_body(self, body: bytes) -> None:
        framing = self.framing
        if framing == RAW:
            self.out.append(body)
        elif framing == RECHUNK:
            self.out.extend((b"%x\r\n" % len(body), body, _CRLF))
        # DROP: the body of a response that was not asked for (or what follows a HEAD head).

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.framing == RECHUNK:
            self.out.append(_CHUNK_END)
        # Until the next exchange's head, nothing more reaches the client.
        self.framing = DROP
        self.complete = True


class Pool:
    """Idle keep-alive connections per backend address (LIFO: the warmest first)."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[UpstreamProtocol]] = {}

    def take(self, key: tuple[str, int]) -> UpstreamProtocol | None:
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn.closed:
                return conn
        return None

    def put(self, conn: UpstreamProtocol) -> None:
        if conn.closed:
            return
        conns = self.idle.get(conn.key)
        if conns is None:
            conns = self.idle[conn.key] = []
        if len(conns) >= MAX_IDLE_PER_BACKEND:
            conn.transport.close()
            return
        # Keep reading while idle so that a close by the backend is noticed at once.
        if conn.reading_paused:
            conn.resume_reading()
        conns.append(conn)

    def discard(self, conn: UpstreamProtocol) -> None:
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def prune(self, keep: set[tuple[str, int]]) -> None:
        """Close idle connections to backends that are in no route any more."""
        for key in [k for k in self.idle if k not in keep]:
            for conn in self.idle.pop(key):
                conn.transport.close()

    def close_all(self) -> None:
        self.prune(set())
