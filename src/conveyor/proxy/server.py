"""The proxy process's state: route table, listeners, upstream pool, counters, draining."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from conveyor import __version__
from conveyor.proxy.downstream import ClientProtocol
from conveyor.proxy.model import (
    ColorStats,
    ConfigurationError,
    Limits,
    Route,
    Sticky,
    parse_backends,
    parse_fallback,
    parse_listen,
    parse_sticky,
)
from conveyor.proxy.state import ProxyState

# How often overdue response heads and idle keep-alive clients are looked for: the 504 comes at
# most this late, an idle client is closed at most two sweeps after its keepalive_timeout.
SWEEP_INTERVAL = 0.05


class BindError(Exception):
    pass


def bind_message(host: str, port: int, exc: OSError) -> str:
    if exc.errno:
        reason = os.strerror(exc.errno)
        reason = reason[:1].lower() + reason[1:]
        return f"cannot listen on {host}:{port}: [Errno {exc.errno}] {reason}"
    return f"cannot listen on {host}:{port}: {exc}"


def _checked(
    name: object, listen: object, limits: object, sticky: object
) -> tuple[tuple[str, int], Limits, Sticky | None]:
    if not isinstance(name, str) or not name:
        raise ConfigurationError("name must be a non-empty string")
    return parse_listen(listen), Limits.from_json(limits), parse_sticky(sticky)


class Proxy:
    """The control side: listeners, counters, route changes, the sweep and the drain.

    The connection protocols get `state` only (routes, pool, loop, clients, closing).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.state = ProxyState(loop)
        self.started_at = time.time()
        # What ping and status report; a test may make it look like an older conveyor's.
        self.version = __version__
        # name -> its servers: one, or one per address the keeper bound (e.g. "localhost").
        self.listeners: dict[str, list[asyncio.Server]] = {}
        # name -> colour -> counters; outlives route swaps.
        self.stats: dict[str, dict[str, ColorStats]] = {}
        self._lock = asyncio.Lock()
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        """Answer 504 for overdue response heads, 408 for request heads that take too long;
        close keep-alive clients idle for too long.

        Neither needs a clock read per request: a new request zeroes `idle_since`, a completed
        head zeroes `head_since`, and the first sweep that finds the client idle (or in the
        middle of a head) stamps it. So both close at most two sweeps late.
        """
        now = perf_counter()
        state = self.state
        for client in list(state.clients):
            queue = client.queue
            if queue:
                ex = queue[0]
                if ex.deadline and ex.deadline <= now:
                    ex.on_timeout()
            if client.receiving_head:
                since = client.head_since
                if not since:
                    client.head_since = now
                elif now - since >= client.limits.header_timeout:
                    client.head_timeout()
            elif client.idle:
                since = client.idle_since
                if not since:
                    client.idle_since = now
                elif now - since >= client.limits.keepalive_timeout:
                    client.transport.close()
            elif not queue:
                client.idle_since = 0.0
        self._sweeper = state.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def set_route(
        self,
        name: str,
        listen: object,
        backends: object,
        limits: object,
        sticky: object = None,
        fallback: object = None,
        socks: Sequence[socket.socket] = (),
    ) -> None:
        """Replace route `name`. A worker gets its listening sockets from the keeper (`socks`,
        bound already, with a new address); the proxy in one process binds them itself."""
        address, lim, stick = _checked(name, listen, limits, sticky)
        state = self.state
        async with self._lock:
            stats_of = self.stats.get(name, {})
            route = Route(
                name,
                address,
                parse_backends(backends, stats_of, stick),
                lim,
                stick,
                parse_fallback(fallback, stats_of),
            )
            old = state.routes.get(name)
            new_servers: list[asyncio.Server] | None = None
            if socks:
                new_servers = [await self._serve_on(name, sock) for sock in socks]
            elif old is None or old.listen != address:
                new_servers = [await self._listen(name, address)]
            # Nothing can fail from here on: commit.
            self.stats[name] = stats_of
            state.routes[name] = route
            if new_servers is not None:
                for previous in self.listeners.get(name, ()):
                    previous.close()
                self.listeners[name] = new_servers
            state.pool.prune(self._live_addresses())

    async def _listen(self, name: str, address: tuple[str, int]) -> asyncio.Server:
        host, port = address
        state = self.state
        if state.closing:
            raise BindError("the proxy is shutting down")
        try:
            return await state.loop.create_server(
                lambda: ClientProtocol(state, name),
                host,
                port,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            raise BindError(bind_message(host, port, exc)) from exc

    def set_route_now(
        self,
        name: str,
        listen: object,
        backends: object,
        limits: object,
        sticky: object = None,
        fallback: object = None,
    ) -> bool:
        """`set_route` when nothing has to be awaited: the route exists, keeps its listen
        address, and no other change is under way. False (nothing changed): use set_route."""
        address, lim, stick = _checked(name, listen, limits, sticky)
        state = self.state
        old = state.routes.get(name)
        if self._lock.locked() or old is None or old.listen != address:
            return False
        stats_of = self.stats.get(name, {})
        route = Route(
            name,
            address,
            parse_backends(backends, stats_of, stick),
            lim,
            stick,
            parse_fallback(fallback, stats_of),
        )
        self.stats[name] = stats_of
        state.routes[name] = route
        state.pool.prune(self._live_addresses())
        return True

    async def _serve_on(self, name: str, sock: socket.socket) -> asyncio.Server:
        state = self.state
        if state.closing:
            raise BindError("the proxy is shutting down")
        return await state.loop.create_server(
            lambda: ClientProtocol(state, name), sock=sock, backlog=1024
        )

    async def remove_route(self, name: str) -> None:
        async with self._lock:
            self.state.routes.pop(name, None)
            self.stats.pop(name, None)
            for server in self.listeners.pop(name, ()):
                server.close()
            self.state.pool.prune(self._live_addresses())

    def _live_addresses(self) -> set[tuple[str, int]]:
        # The fallback's too: connections opened by retries serve it again after a switch back.
        return {b.key for r in self.state.routes.values() for b in (*r.backends, *r.fallback)}

    def routes_json(self) -> dict[str, Any]:
        return {name: route.to_json() for name, route in self.state.routes.items()}

    def requests(self) -> int:
        """Requests received since this process started (all routes and colours)."""
        return sum(s.requests for colors in self.stats.values() for s in colors.values())

    async def counters(self) -> dict[str, Any]:
        return self.stats_json()

    async def status(self) -> dict[str, Any]:
        """One process serves (no keeper): it is its own only worker."""
        me = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "connections": len(self.state.clients),
            "requests": self.requests(),
            "restarts": 0,
        }
        return {
            "pid": os.getpid(),
            "version": self.version,
            "started_at": self.started_at,
            "workers": [me],
        }

    def stats_json(self) -> dict[str, Any]:
        return {
            name: {"colors": {color: s.to_json() for color, s in colors.items()}}
            for name, colors in self.stats.items()
        }

    async def drain(self, timeout: float, grace: float = 0.0) -> None:
        """Stop accepting, let in-flight exchanges finish (bounded), then close everything.

        An idle keep-alive client is closed once the sweep has seen it idle for `grace` seconds
        (0: at once). A reload passes a grace: under load a keep-alive client sends its next
        request within microseconds, gets it answered with `Connection: close` and reconnects
        (to the new workers), instead of racing a close with that request.
        """
        state = self.state
        state.closing = True
        state.linger = grace > 0
        for servers in self.listeners.values():
            for server in servers:
                server.close()
        self.listeners.clear()
        deadline = state.loop.time() + timeout
        while True:
            now = perf_counter()
            for client in list(state.clients):
                if client.idle and (
                    not grace or (client.idle_since and now - client.idle_since >= grace)
                ):
                    client.transport.close()
            if not state.clients or state.loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for client in list(state.clients):
            client.transport.abort()
        state.pool.close_all()
        self._sweeper.cancel()
