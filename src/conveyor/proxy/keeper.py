"""The keeper: owns the listening sockets and the control socket, runs N worker processes.

It does no request work. Each worker (worker.py) gets a socketpair to the keeper, the route table
and the listening sockets over it (SCM_RIGHTS), and accepts on the same sockets as its siblings:
one accept queue per route, shared. When a worker dies the socket stays open in the keeper and
in the other workers, so the kernel goes on queueing (and the others accepting) new connections:
nothing is refused, and only the requests in flight on the dead worker are lost. The keeper
starts a new worker at once; it gets the table before it accepts anything.

Route changes come on the control socket (the same protocol as the one-process proxy) and are
checked here. A switch (the route keeps its address) is written to the table in shared memory
(table.py), which every worker reads at its next dispatch: done once written. A new route or
address (bound here) and a removal are sent to every worker, and answered when all have them. Counters are the sum of the workers' (asked when needed), plus what
workers that ended had counted (`retired`).

A reload hands the sockets to a new keeper: handover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from conveyor import __version__
from conveyor.proxy.channel import Channel, ChannelClosed
from conveyor.proxy.control import log
from conveyor.proxy.counters import add_routes, zero_inflight
from conveyor.proxy.model import (
    ConfigurationError,
    Limits,
    Route,
    parse_backends,
    parse_fallback,
    parse_listen,
    parse_sticky,
)
from conveyor.proxy.server import BindError, bind_message
from conveyor.proxy.table import SharedTable

CALL_TIMEOUT = 5.0
POLL_INTERVAL = 1.0  # counters of each worker, kept in case it dies
# A worker that dies within this many seconds of its start is restarted after a growing
# back-off (a worker that cannot start must not make the keeper spin).
QUICK_DEATH = 1.0
MAX_BACKOFF = 5.0


@dataclass
class WorkerHandle:
    slot: int
    proc: subprocess.Popen[bytes]
    channel: Channel
    started_at: float = field(default_factory=time.time)
    last: dict[str, Any] = field(default_factory=dict)  # the last stats answer
    ready: bool = False
    retiring: bool = False
    final: dict[str, Any] | None = None


class Keeper:
    def __init__(self, workers: int, version: str = __version__) -> None:
        self.loop = asyncio.get_running_loop()
        self.nworkers = workers
        self.version = version
        self.started_at = time.time()
        self.routes: dict[str, dict[str, Any]] = {}  # name -> route JSON (checked)
        self.listeners: dict[str, list[socket.socket]] = {}  # name -> one socket per address
        self.workers: dict[int, WorkerHandle] = {}  # slot -> the worker running in it
        self.restarts: dict[int, int] = {}
        self.quick_deaths: dict[int, int] = {}
        self.retired: dict[str, Any] = {}  # counters of workers that ended
        self.closing = False
        self.lock = asyncio.Lock()
        self.table = SharedTable.create()  # the routes every worker reads at dispatch
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller = self._spawn_task(self._poll())

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- workers ---------------------------------------------------------------------------------

    async def start_workers(self) -> None:
        await asyncio.gather(*(self._start(slot) for slot in range(self.nworkers)))
        self.table.publish(self.routes)  # a reload's table: the workers have it already

    async def _start(self, slot: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = ["--worker", str(child.fileno()), "--table", str(self.table.fd)]
            proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor.proxy", *argv],
                pass_fds=[child.fileno(), self.table.fd],
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        handle: WorkerHandle
        channel = Channel(parent, self._from_worker(slot), lambda: self._lost(handle))
        handle = WorkerHandle(slot, proc, channel)
        self.workers[slot] = handle
        # The table first: the worker accepts on a socket only once its route is set. Under the
        # route lock, so that no change goes to the others only while this one is being told.
        async with self.lock:
            try:
                for name, route in list(self.routes.items()):
                    await self._tell(
                        handle, {"op": "set_route", "route": route}, self.listeners[name]
                    )
            except (ChannelClosed, TimeoutError, RuntimeError) as exc:
                log(f"worker {proc.pid} did not take the route table: {exc}")
                return
            handle.ready = True
        log(f"worker {slot} started, pid {proc.pid}")

    def _from_worker(self, slot: int) -> Any:
        async def handle(msg: dict[str, Any], socks: list[socket.socket]) -> dict[str, Any]:
            for s in socks:
                s.close()
            worker = self.workers.get(slot)
            if msg.get("op") == "drained" and worker is not None:
                worker.final = msg.get("stats", {})
                worker.channel.close()
            return {"ok": True}

        return handle

    def _lost(self, handle: WorkerHandle) -> None:
        """The worker's channel closed: it exited (or is about to). Reap it, keep its counts,
        and start another in its slot unless it was asked to stop."""
        self._spawn_task(self._reap(handle))

    async def _reap(self, handle: WorkerHandle) -> None:
        code = await self.loop.run_in_executor(None, handle.proc.wait)
        counts = handle.final if handle.final is not None else handle.last
        add_routes(self.retired, zero_inflight(counts.get("routes", {})), self.routes)
        if self.workers.get(handle.slot) is handle:
            del self.workers[handle.slot]
        if handle.retiring or self.closing:
            return
        log(f"worker {handle.slot} (pid {handle.proc.pid}) exited with code {code}: restarting it")
        self.restarts[handle.slot] = self.restarts.get(handle.slot, 0) + 1
        if time.time() - handle.started_at < QUICK_DEATH:
            n = self.quick_deaths[handle.slot] = self.quick_deaths.get(handle.slot, 0) + 1
            await asyncio.sleep(min(MAX_BACKOFF, 0.05 * 2**n))
        else:
            self.quick_deaths[handle.slot] = 0
        if not self.closing:
            await self._start(handle.slot)

    async def _tell(
        self, handle: WorkerHandle, msg: dict[str, Any], socks: list[socket.socket] | None = None
    ) -> dict[str, Any]:
        answer, extra = await handle.channel.request(msg, socks or [], CALL_TIMEOUT)
        for s in extra:
            s.close()
        if not answer.get("ok"):
            raise RuntimeError(str(answer.get("error")))
        return answer

    async def _everyone(
        self, msg: dict[str, Any], socks: list[socket.socket] | None = None
    ) -> list[dict[str, Any]]:
        """Send `msg` to every live worker and wait for all answers. A worker that dies meanwhile
        does not count: its successor gets the table when it starts."""
        live = [w for w in self.workers.values() if w.ready and not w.channel.closed]
        results = await asyncio.gather(
            *(self._tell(w, msg, socks) for w in live), return_exceptions=True
        )
        out = []
        for w, r in zip(live, results, strict=True):
            if isinstance(r, dict):
                out.append(r)
            elif isinstance(r, RuntimeError):
                raise r
            elif not w.channel.closed:
                log(f"worker {w.slot} (pid {w.proc.pid}) did not answer {msg.get('op')}: {r!r}")
        return out

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            with contextlib.suppress(Exception):
                await self._stats()

    async def _stats(self) -> list[WorkerHandle]:
        live = [w for w in self.workers.values() if w.ready and not w.channel.closed]
        answers = await asyncio.gather(
            *(self._tell(w, {"op": "stats"}) for w in live), return_exceptions=True
        )
        for w, a in zip(live, answers, strict=True):
            if isinstance(a, dict):
                w.last = a
        return live

    # -- the control socket's operations -----------------------------------------------------------

    def routes_json(self) -> dict[str, Any]:
        return {
            name: {k: v for k, v in r.items() if k != "name"} for name, r in self.routes.items()
        }

    async def set_route(
        self,
        name: str,
        listen: object,
        backends: object,
        limits: object,
        sticky: object = None,
        fallback: object = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name must be a non-empty string")
        address = parse_listen(listen)
        stick = parse_sticky(sticky)
        route = Route(
            name,
            address,
            parse_backends(backends, {}, stick),
            Limits.from_json(limits),
            stick,
            parse_fallback(fallback, {}),
        )
        doc = {"name": name, **route.to_json()}
        async with self.lock:
            old = self.routes.get(name)
            if old is not None and tuple(old["listen"]) == address:
                # A switch: written to shared memory, every worker's next dispatch has it.
                previous, self.routes[name] = old, doc
                if self.table.publish(self.routes):
                    return
                self.routes[name] = previous  # too big for shared memory: over the channels
            socks: list[socket.socket] = []
            if old is None or tuple(old["listen"]) != address:
                socks = self._bind(address)
            try:
                await self._everyone({"op": "set_route", "route": doc}, socks)
            except RuntimeError as exc:
                _close(socks)
                raise ConfigurationError(str(exc)) from exc
            self.routes[name] = doc
            self.table.publish(self.routes)
            if socks:
                _close(self.listeners.get(name, []))
                self.listeners[name] = socks

    def _bind(self, address: tuple[str, int]) -> list[socket.socket]:
        """Listening sockets for every address `host` stands for (as loop.create_server binds
        "localhost" on 127.0.0.1 and ::1); all or none."""
        host, port = address
        if self.closing:
            raise BindError("the proxy is shutting down")
        socks: list[socket.socket] = []
        try:
            seen = set()
            for family, _, proto, _, sockaddr in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            ):
                if (family, sockaddr) in seen:
                    continue
                seen.add((family, sockaddr))
                sock = socket.socket(family, socket.SOCK_STREAM, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # As asyncio does: "::" must not also take the IPv4 port.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
                sock.listen(1024)
                sock.setblocking(False)
        except OSError as exc:
            _close(socks)
            raise BindError(bind_message(host, port, exc)) from exc
        return socks

    async def remove_route(self, name: str) -> None:
        async with self.lock:
            await self._everyone({"op": "remove_route", "name": name})
            self.routes.pop(name, None)
            self.table.publish(self.routes)
            self.retired.pop(name, None)
            _close(self.listeners.pop(name, []))

    async def counters(self) -> dict[str, Any]:
        live = await self._stats()
        total: dict[str, Any] = {}
        add_routes(total, self.retired, self.routes)
        for w in live:
            add_routes(total, w.last.get("routes", {}), self.routes)
        return total

    async def status(self) -> dict[str, Any]:
        live = await self._stats()
        workers = [
            {
                "slot": w.slot,
                "pid": w.proc.pid,
                "started_at": w.started_at,
                "connections": w.last.get("connections", 0),
                "requests": w.last.get("requests", 0),
                "restarts": self.restarts.get(w.slot, 0),
                "hot_path": w.last.get("hot_path", "interpreted"),
            }
            for w in sorted(live, key=lambda w: w.slot)
        ]
        return {
            "pid": os.getpid(),
            "version": self.version,
            "started_at": self.started_at,
            "workers": workers,
        }

    # -- the end ---------------------------------------------------------------------------------

    async def retire(self, timeout: float, grace: float) -> None:
        """Every worker stops accepting, drains (up to `timeout`) and exits; then the keeper's
        sockets are closed."""
        handles = list(self.workers.values())
        for w in handles:
            w.retiring = True
        await asyncio.gather(
            *(self._tell(w, {"op": "drain", "timeout": timeout, "grace": grace}) for w in handles),
            return_exceptions=True,
        )
        deadline = self.loop.time() + timeout + 2.0
        while any(w.proc.poll() is None for w in handles) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for w in handles:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
        # Let the reapers add the last counts.
        while any(self.workers.get(w.slot) is w for w in handles) and self.loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def shutdown(self, timeout: float, grace: float = 0.0) -> None:
        self.closing = True
        self._poller.cancel()
        await self.retire(timeout, grace)
        for socks in self.listeners.values():
            _close(socks)
        self.listeners.clear()


def _close(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
