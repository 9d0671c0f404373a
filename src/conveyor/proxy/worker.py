"""A worker process: the data path of the proxy, serving on the keeper's listening sockets.

`python -m conveyor.proxy --worker FD`: FD is this worker's end of a socketpair with the keeper
(keeper.py). Everything comes over it: the route table with the listening sockets (SCM_RIGHTS),
route changes, requests for counters, and the order to drain. The worker never binds a port nor
opens the control socket. When the keeper goes away (its end closes) the worker drains and exits:
a worker must never hold a listening socket that no keeper owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
from typing import Any

from conveyor.proxy import native
from conveyor.proxy.channel import Channel, ChannelClosed
from conveyor.proxy.control import log
from conveyor.proxy.model import ConfigurationError
from conveyor.proxy.server import Proxy
from conveyor.proxy.table import SharedTable

# How long in-flight requests may take when the keeper vanished or on SIGTERM.
DRAIN_TIMEOUT = 5.0


class Worker:
    def __init__(self, proxy: Proxy, stop: asyncio.Event, table: SharedTable | None) -> None:
        self.proxy = proxy
        self.stop = stop
        self.table = table
        self.started_at = time.time()
        self.drain_timeout = DRAIN_TIMEOUT
        self.grace = 0.0
        # name -> the route as last applied (the keeper's JSON): a table reread from shared
        # memory rebuilds only the routes that changed.
        self.docs: dict[str, dict[str, Any]] = {}
        if table is not None:
            proxy.state.shared = table.words
            proxy.state.refresh = self.refresh

    def refresh(self) -> None:
        """Apply the keeper's table from shared memory (called at dispatch when it moved)."""
        assert self.table is not None
        seq, table = self.table.read()
        proxy = self.proxy
        for name, doc in table.items():
            if self.docs.get(name) == doc:
                continue
            old = proxy.state.routes.get(name)
            if old is None or old.listen != tuple(doc["listen"]):
                continue  # a new listener comes over the channel, with its socket
            try:
                done = proxy.set_route_now(
                    name,
                    doc["listen"],
                    doc["backends"],
                    doc.get("limits"),
                    doc.get("sticky"),
                    doc.get("fallback") or None,
                )
            except (ConfigurationError, KeyError, TypeError) as exc:
                # The keeper checked it: not expected. Never let it fail the request at hand.
                log(f"route {name} from shared memory not applied: {exc!r}")
                done = True
            if not done:
                return  # a change is under way here: again at the next dispatch
            self.docs[name] = doc
        proxy.state.shared_seen = seq

    def handle_now(self, msg: dict[str, Any], socks: list[socket.socket]) -> dict[str, Any] | None:
        """What can be answered without waiting: a switch (the listen address stays), the
        counters. None: `handle` does it."""
        op = msg.get("op")
        if op == "set_route" and not socks:
            r = msg["route"]
            self.docs.pop(r["name"], None)
            done = self.proxy.set_route_now(
                r["name"],
                r["listen"],
                r["backends"],
                r.get("limits"),
                r.get("sticky"),
                r.get("fallback") or None,
            )
            if not done:
                return None
            self.docs[r["name"]] = r
            return {"ok": True}
        if op == "stats":
            return self.stats()
        return None

    def stats(self) -> dict[str, Any]:
        proxy = self.proxy
        return {
            "ok": True,
            "routes": proxy.stats_json(),
            "connections": len(proxy.state.clients),
            "requests": proxy.requests(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "hot_path": native.STATE.label(),
        }

    async def handle(self, msg: dict[str, Any], socks: list[socket.socket]) -> dict[str, Any]:
        op = msg.get("op")
        proxy = self.proxy
        if op == "set_route":
            r = msg["route"]
            self.docs.pop(r["name"], None)
            await proxy.set_route(
                r["name"],
                r["listen"],
                r["backends"],
                r.get("limits"),
                r.get("sticky"),
                r.get("fallback") or None,
                socks,
            )
            self.docs[r["name"]] = r
            return {"ok": True}
        if op == "remove_route":
            self.docs.pop(str(msg["name"]), None)
            await proxy.remove_route(str(msg["name"]))
            return {"ok": True}
        if op == "stats":
            return self.stats()
        if op == "drain":
            self.drain_timeout = float(msg.get("timeout", DRAIN_TIMEOUT))
            self.grace = float(msg.get("grace", 0.0))
            self.stop.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}


async def serve(fd: int, table_fd: int | None = None) -> None:
    loop = asyncio.get_running_loop()
    proxy = Proxy(loop)
    stop = asyncio.Event()
    worker = Worker(proxy, stop, None if table_fd is None else SharedTable(table_fd))
    channel = Channel(socket.socket(fileno=fd), worker.handle, stop.set)
    channel.sync_handler = worker.handle_now
    # The keeper handles the signals of the process group (a terminal's Ctrl-C, a hang-up);
    # SIGTERM sent to this worker alone drains it like the keeper's order.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    gc.freeze()  # see __main__.serve
    await stop.wait()
    await proxy.drain(worker.drain_timeout, worker.grace)
    # The last counters (what the drain served too) go to the keeper, which closes the channel
    # once it has them; a keeper that is gone gets nothing, and nothing waits for it.
    if not channel.closed:
        final = asyncio.Event()
        channel.on_close = final.set
        with contextlib.suppress(ChannelClosed, TimeoutError):
            await channel.send({"op": "drained", "stats": worker.stats()})
            await asyncio.wait_for(final.wait(), 2.0)
    channel.close()
