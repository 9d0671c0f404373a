"""What the connection protocols share: the one object they get instead of the whole `Proxy`.

Like uvicorn's `ServerState`: `Proxy` (server.py) owns the listeners, the counters, the sweep and
the control operations, and hands each `ClientProtocol` and `UpstreamProtocol` this state only.
A protocol can then be driven by a test with a `ProxyState` and no `Proxy`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from conveyor.proxy.model import Route
from conveyor.proxy.upstream import Pool

if TYPE_CHECKING:
    from conveyor.proxy.downstream import ClientProtocol


class ProxyState:
    __slots__ = (
        "clients",
        "closing",
        "linger",
        "loop",
        "pool",
        "refresh",
        "routes",
        "shared",
        "shared_seen",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # name -> Route. Read by every request at dispatch; an entry is replaced, never mutated.
        self.routes: dict[str, Route] = {}
        self.pool = Pool()
        # Open client connections: for the idle/timeout sweep and the drain.
        self.clients: set[ClientProtocol] = set()
        # Draining: answers say `Connection: close` and finished connections are not kept.
        self.closing = False
        # Draining for a reload: keep-alive connections are closed after their next response
        # (or once idle for a while), not at once. See Proxy.drain.
        self.linger = False
        # A worker: the sequence number of the keeper's table in shared memory (table.py; None
        # in the one-process proxy), the one applied, and how to apply a newer one.
        self.shared: memoryview | None = None
        self.shared_seen = 0
        self.refresh: Callable[[], None] = _nothing


def _nothing() -> None:
    pass
