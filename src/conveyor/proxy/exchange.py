"""One request/response exchange: picks a backend, gets a connection, retries, times out.

The client side (`downstream.ClientProtocol`) parses the request and hands the bytes to forward
to an `Exchange`; the upstream side (`upstream.UpstreamProtocol`) parses the response and writes
it to the client. The exchange owns what joins them: backend choice, connection pooling, the
retry policy, the response-head timeout and the counters.

Retries, all before a single response byte reached the proxy (docs/proxy.md, "Retries"):
- a refused connect: the route's other live backends, then its fallback (once), then back-off;
- a pooled connection that turns out closed: the request again on a fresh connection (idempotent);
- a fresh connection reset or closed: the fallback, once, for a whole idempotent request.
"""

from __future__ import annotations

import asyncio
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Final

from conveyor.proxy.flow import PAUSE_PENDING
from conveyor.proxy.model import COOKIE, IDEMPOTENT, REFUSED, RESET, Backend, ColorStats, Route
from conveyor.proxy.responses import canned
from conveyor.proxy.upstream import UpstreamProtocol

if TYPE_CHECKING:
    from conveyor.proxy.downstream import ClientProtocol
    from conveyor.proxy.state import ProxyState

# Above this many buffered request bytes (no upstream connection yet), stop reading the client.
PENDING_HIGH: Final = 256 * 1024
# A request sent on a reused connection is kept (up to this size) until the first response byte,
# so that it can be replayed on a fresh connection if the pooled one was already dead; on a route
# with a fallback, on any connection, so that it can be sent there if the backend dies with it.
REPLAY_CAP: Final = 256 * 1024
FIRST_BACKOFF: Final = 0.025


class Exchange:
    __slots__ = (
        "can_retry",
        "client",
        "deadline",
        "finished",
        "keep_alive",
        "method",
        "pending",
        "pending_size",
        "replay",
        "replay_size",
        "request_done",
        "responded",
        "retried",
        "reused",
        "set_cookie",
        "started",
        "state",
        "stats",
        "tunnel",
        "upgrade",
        "upstream",
    )

    def __init__(
        self,
        client: ClientProtocol,
        method: bytes,
        head: bytes,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.client = client
        self.state: ProxyState = client.state
        self.method = method
        self.pending: list[bytes] = [head]
        self.pending_size = len(head)
        self.replay: list[bytes] | None = None
        self.replay_size = 0
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.request_done = False
        self.responded = False
        self.finished = False
        self.tunnel = False
        self.started = 0.0
        self.stats: ColorStats | None = None
        self.upstream: UpstreamProtocol | None = None
        # When the response head is due (perf_counter); 0.0 when not waiting. Checked by the
        # proxy's sweep, which costs less than a timer handle per request.
        self.deadline = 0.0
        # Set-Cookie line for the response head: only on a split cookie-sticky route when the
        # request had no cookie naming a live colour.
        self.set_cookie: bytes | None = None
        # The route had a fallback at dispatch: keep what is sent (idempotent methods) in case
        # the backend dies before answering. `retried`: the one retry on the fallback is spent.
        self.can_retry = False
        self.retried = False
        self.reused = False

    # -- request bytes -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue request bytes; `flush` (called once per client read) writes them upstream."""
        self.pending.append(data)
        self.pending_size += len(data)
        if self.upstream is None and self.pending_size > PENDING_HIGH:
            self.client.pause(PAUSE_PENDING)

    def flush(self) -> None:
        up = self.upstream
        if up is None or not self.pending:
            return
        pending = self.pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self.pending_size = 0
        if self.replay is not None:
            self.replay.append(data)
            self.replay_size += len(data)
            if self.replay_size > REPLAY_CAP:
                self.replay = None
        up.transport.write(data)
        if self.request_done and not self.deadline and not up.head_done and not self.tunnel:
            self.deadline = perf_counter() + self.client.limits.upstream_timeout

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Pick a backend from the route table as it is now and send the request."""
        state = self.state
        self.started = perf_counter()
        shared = state.shared
        if shared is not None and shared[0] != state.shared_seen:
            state.refresh()  # the keeper wrote a newer table (a switch): apply it first
        route = state.routes.get(self.client.name)
        if route is None:
            self.local_response(503)
            return
        if route.spare:
            self.can_retry = True
        backend: Backend | None
        if route.mode:
            # A split sticky route. Nothing has been flushed yet: pending[0] is the head.
            if route.mode == COOKIE:
                backend, self.set_cookie = route.pick_by_cookie(self.pending[0])
            else:
                backend = route.pick_by_header(self.pending[0])
        else:
            backend = route.pick()
            if backend is None:
                self.local_response(503)
                return
        # bind(), inlined: the first binding has nothing to undo.
        stats = self.stats = backend.stats
        stats.requests += 1
        stats.inflight += 1
        conn = state.pool.take(backend.key)
        if conn is not None:
            self.attach(conn, reused=True)
        else:
            state.loop.create_task(self.open(first=backend))

    def bind(self, backend: Backend) -> None:
        old = self.stats
        if old is not None:
            old.requests -= 1
            old.inflight -= 1
        stats = self.stats = backend.stats
        stats.requests += 1
        stats.inflight += 1

    def attach(self, conn: UpstreamProtocol, reused: bool) -> None:
        self.upstream = conn
        self.reused = reused
        conn.start(self)
        self.replay = [] if (reused or self.can_retry) and self.method in IDEMPOTENT else None
        self.replay_size = 0
        if self.client.write_paused:
            conn.pause_reading()
        self.flush()
        if self.client.paused:
            self.client.resume(PAUSE_PENDING)

    async def open(self, first: Backend | None) -> None:
        """Connect to a backend, retrying refused/unreachable ones (the app may be restarting).

        The request is still entirely in `pending` (the client is paused when that grows), so a
        failed connect can always be retried: first on the route's other live backends, then on
        its fallback (once per request), then after a growing back-off, re-reading the route
        table each time because a swap to a healthy colour may have happened meanwhile.
        `first` is already bound (counted) when given.
        """
        state = self.state
        limits = self.client.limits
        backoffs_left = limits.retries
        delay = FIRST_BACKOFF
        tried: set[tuple[str, int]] = set()
        backend = first
        while not self.finished:
            if backend is None:
                shared = state.shared
                if shared is not None and shared[0] != state.shared_seen:
                    state.refresh()
                route = state.routes.get(self.client.name)
                if route is None:
                    self.local_response(503)
                    return
                # Availability beats stickiness: any live backend not tried yet.
                backend = route.pick(tried)
                if backend is not None:
                    self.bind(backend)
                    self.follow_cookie(route, backend)
                elif not tried:
                    self.local_response(503)
                    return
                else:
                    backend = self.to_fallback(route, REFUSED, tried)
                if backend is None:
                    if backoffs_left <= 0:
                        self.local_response(502)
                        return
                    backoffs_left -= 1
                    await asyncio.sleep(delay)
                    delay *= 2
                    tried.clear()
                    continue
            host, port = backend.host, backend.port
            try:
                _, conn = await asyncio.wait_for(
                    state.loop.create_connection(
                        partial(UpstreamProtocol, state, host, port), host, port
                    ),
                    limits.connect_timeout,
                )
            except (OSError, TimeoutError):
                tried.add((host, port))
                backend = None
                continue
            if self.finished:
                state.pool.put(conn)
                return
            self.attach(conn, reused=False)
            return

    def follow_cookie(self, route: Route, backend: Backend) -> None:
        if self.set_cookie is not None:
            # The response may come from another colour than first picked: the cookie names the
            # one that answers (or none, if the route is no longer split, or it is the
            # fallback). A request that came with a valid cookie keeps it: its colour may be
            # back for the next request.
            self.set_cookie = route.set_cookie.get(backend.color)

    def to_fallback(
        self, route: Route | None, reason: int, failed: set[tuple[str, int]]
    ) -> Backend | None:
        """Bind the request to the route's fallback for its one retry; None when it may not.

        The failure stays counted against the colour that failed (a retry and an upstream error:
        the analysis must still see it), the request moves to the fallback's counters.
        """
        if self.retried or route is None:
            return None
        backend = route.retry_target(reason, self.method, self.request_done, failed)
        if backend is None:
            return None
        self.retried = True
        self.can_retry = False
        stats = self.stats
        if stats is not None:
            stats.retries[reason] += 1
            stats.upstream_errors += 1
        self.bind(backend)
        self.follow_cookie(route, backend)
        return backend

    # -- outcomes ------------------------------------------------------------------------------

    def on_timeout(self) -> None:
        self.deadline = 0.0
        up = self.upstream
        if up is not None and not up.head_done and not self.finished:
            self.local_response(504)

    def response_complete(self, status: int, reusable: bool) -> None:
        """The final response went out whole: count it, recycle the upstream connection."""
        self.finished = True
        self.deadline = 0.0
        stats = self.stats
        if stats is not None:
            stats.observe(status, perf_counter() - self.started)
            stats.inflight -= 1
        if self.tunnel:
            # The upstream connection stays attached: it is now one end of the pipe.
            return
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.exchange = None
            if reusable and self.request_done and not self.pending:
                self.state.pool.put(up)
            else:
                up.transport.close()
        self.client.exchange_done(self)

    def start_tunnel(self) -> None:
        """After a 101: bytes flow raw both ways; the exchange counts as answered."""
        self.tunnel = True
        self.response_complete(101, reusable=False)
        self.client.start_tunnel(self)

    def upstream_lost(self, got_bytes: bool) -> None:
        """The upstream connection closed (or sent garbage) before the response was complete."""
        if self.finished:
            return
        up = self.upstream
        replay = self.replay
        if not got_bytes and replay is not None and not self.responded:
            first = None
            if not self.reused:
                # A fresh connection, closed or reset without a byte of answer: the backend
                # failed (died?) with the request. Its one retry goes to the fallback, if any.
                route = self.state.routes.get(self.client.name)
                failed = {up.key} if up is not None else set()
                first = self.to_fallback(route, RESET, failed)
                if first is None:
                    self.local_response(502)
                    return
            # Else a pooled connection the backend had already closed (an idle keep-alive
            # connection it timed out): the request again on a fresh one, re-picked from the
            # route. Not the retry: a dead backend refuses the fresh connect, and that refusal
            # sends the request on to the fallback.
            self.upstream = None
            if up is not None:
                up.exchange = None
            self.deadline = 0.0
            self.replay = None
            self.pending[0:0] = replay
            self.pending_size += self.replay_size
            self.state.loop.create_task(self.open(first=first))
            return
        self.local_response(502)

    def local_response(self, status: int) -> None:
        """Answer with an error the proxy generates (502/503/504) or cut the client off."""
        if self.finished:
            return
        self.finished = True
        self.deadline = 0.0
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.exchange = None
            up.transport.close()
        stats = self.stats
        if stats is not None:
            stats.inflight -= 1
            if status in (502, 504):
                stats.upstream_errors += 1
        client = self.client
        if self.responded:
            # Part of the real response already went out: the only honest signal left is to
            # cut the connection.
            self.keep_alive = False
            client.transport.close()
            return
        if stats is not None:
            stats.observe(status, perf_counter() - self.started)
        keep = self.keep_alive and self.request_done and not self.upgrade
        self.keep_alive = keep
        self.responded = True
        client.transport.write(canned(status, keep))
        client.exchange_done(self)

    def abort(self) -> None:
        """The client went away: drop everything without answering."""
        up = self.upstream
        if self.tunnel:
            if up is not None:
                up.transport.close()
            return
        if self.finished:
            return
        self.finished = True
        self.deadline = 0.0
        self.upstream = None
        if up is not None:
            up.exchange = None
            up.transport.close()
        if self.stats is not None:
            self.stats.inflight -= 1
