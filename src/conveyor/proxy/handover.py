"""A reload (`conveyor proxy reload`): one keeper hands its sockets and routes to the next.

A new keeper started with `--takeover` connects to the running keeper's control socket and sends
`handover` (`take_over`); the running keeper (`KeeperControl.handover`) sends the route table,
its counters and its listening sockets over that connection (channel.py); the new keeper starts
its workers on them, renames its control socket over the old one and says `ready`; then the old
keeper's workers stop accepting, drain their connections (up to the drain timeout) and exit, and
what they counted meanwhile goes to the new keeper (`retired`), which adds it to its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.proxy.channel import Channel, ChannelClosed
from conveyor.proxy.control import ControlServer, log
from conveyor.proxy.counters import add_routes, zero_inflight
from conveyor.proxy.keeper import CALL_TIMEOUT, Keeper


class KeeperControl(ControlServer):
    """The control socket of a keeper: the common protocol, and `handover` for a reload.

    From the moment a handover begins until the successor owns the control socket, route
    changes sent here wait, then go to the successor (the path is its by then): none is lost.
    """

    def __init__(self, keeper: Keeper, path: Path, on_shutdown: Callable[[], None]) -> None:
        super().__init__(keeper, path, on_shutdown)
        self.keeper = keeper
        self.moving = False
        self.moved = asyncio.Event()
        self.handed_over = asyncio.Event()

    async def handle(self, line: bytes) -> tuple[dict[str, Any], bool]:
        if self.moving and b'"ping"' not in line and b'"status"' not in line:
            await self.moved.wait()
            return await _forward(str(self.path), line), False
        return await super().handle(line)

    async def handover(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        keeper = self.keeper
        transport: Any = writer.transport
        transport.pause_reading()  # the duplicate below reads this connection from now on
        raw = writer.get_extra_info("socket")
        channel = Channel(socket.socket(fileno=os.dup(raw.fileno())))
        ready = asyncio.Event()
        said: dict[str, Any] = {}

        async def on_message(msg: dict[str, Any], socks: list[socket.socket]) -> dict[str, Any]:
            said.update(msg)
            ready.set()
            return {"ok": True}

        channel.handler = on_message
        channel.on_close = ready.set
        self.moving = True
        try:
            async with keeper.lock:  # no route change half-applied while the table is copied
                names = list(keeper.routes)
                snapshot = await keeper.counters()
                await channel.send(
                    {
                        "op": "table",
                        "version": keeper.version,
                        "routes": [keeper.routes[n] for n in names],
                        "sockets": [len(keeper.listeners[n]) for n in names],
                        "counters": zero_inflight(snapshot),
                    },
                    [sock for n in names for sock in keeper.listeners[n]],
                )
            await asyncio.wait_for(ready.wait(), 60.0)
            if said.get("op") != "ready":
                log("reload: the new proxy went away before it was ready; going on serving")
                self.moving = False
                return
            self.moved.set()
            log(f"reload: the sockets are pid {said.get('pid')}'s now; draining the workers")
            if self.server is not None:
                self.server.close()  # the path is the successor's: close() must not unlink it
                self.server = None
            await keeper.shutdown(float(said.get("timeout", 30.0)), float(said.get("grace", 1.0)))
            final = await keeper.counters()
            # What the workers counted after the snapshot: the successor adds it to its own.
            add_routes(final, zero_inflight(snapshot), keeper.routes, sign=-1)
            with contextlib.suppress(ChannelClosed, OSError):
                await channel.send({"op": "retired", "routes": final})
                await asyncio.wait_for(channel.request({"op": "bye"}), 2.0)
            self.handed_over.set()
        except (TimeoutError, ChannelClosed, OSError) as exc:
            log(f"reload: handover failed: {exc!r}; going on serving")
            self.moving = False
        finally:
            channel.close()
            writer.close()


async def _forward(path: str, line: bytes) -> dict[str, Any]:
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=16 * 1024 * 1024)
    except OSError as exc:
        return {"ok": False, "error": f"the proxy is reloading: {exc}"}
    try:
        writer.write(line if line.endswith(b"\n") else line + b"\n")
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 10.0))
        return answer
    except (OSError, TimeoutError, ValueError) as exc:
        return {"ok": False, "error": f"the proxy is reloading: {exc}"}
    finally:
        writer.close()


async def take_over(keeper: Keeper, path: str) -> Channel:
    """Connect to the running keeper at `path`; take its route table, sockets and counters."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await keeper.loop.sock_connect(sock, path)
        await keeper.loop.sock_sendall(sock, b'{"op": "handover"}\n')
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"no proxy answers on {path}: {exc}") from exc
    got: asyncio.Future[tuple[dict[str, Any], list[socket.socket]]] = keeper.loop.create_future()

    async def on_message(msg: dict[str, Any], socks: list[socket.socket]) -> dict[str, Any]:
        if msg.get("op") == "retired":
            add_routes(keeper.retired, msg.get("routes", {}), keeper.routes)
        elif not got.done():
            got.set_result((msg, socks))
        return {"ok": True}

    def closed() -> None:
        if got.done():
            return
        answer = channel.unparsed
        if answer.startswith(b"{"):
            # A JSON line: a proxy from before the keeper, which does not know `handover`.
            text = answer.decode(errors="replace").strip()
            got.set_exception(
                RuntimeError(f"the proxy at {path} cannot hand over its sockets: {text}")
            )
        else:
            got.set_exception(RuntimeError(f"the proxy at {path} closed the connection"))

    channel = Channel(sock, on_message, closed)
    try:
        table, socks = await asyncio.wait_for(got, CALL_TIMEOUT)
    except TimeoutError as exc:
        channel.close()
        raise RuntimeError(f"the proxy at {path} did not hand over its sockets") from exc
    if table.get("op") != "table":
        channel.close()
        raise RuntimeError(f"the proxy at {path} cannot hand over its sockets: {table}")
    rest = list(socks)
    for route, count in zip(table["routes"], table["sockets"], strict=True):
        keeper.routes[route["name"]] = route
        keeper.listeners[route["name"]], rest = rest[:count], rest[count:]
    add_routes(keeper.retired, table.get("counters", {}), keeper.routes)
    log(f"reload: took {len(socks)} listening socket(s) from conveyor {table.get('version')}")
    return channel
