"""The proxy as a keeper and N worker processes (docs/proxy.md, "Workers"): real processes, real
sockets. A worker killed under load costs no refused connection; routes, counters and sticky
canaries are the same whichever worker a request lands on; one worker behaves as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_proxy_support import (
    LOCAL,
    Running,
    connect,
    free_port,
    get,
    named,
    run,
    upstreams,
    wait_for,
    wait_gone,
)

from conveyor.routers.base import Backend
from conveyor.routers.builtin import read_pid, start_proxy


@contextlib.contextmanager
def running_proxy(home: Path, workers: int | str) -> Iterator[Running]:
    control, pidfile, log = home / "proxy.sock", home / "proxy.pid", home / "logs" / "proxy.log"
    pid = start_proxy(home, control, pidfile, log, workers=workers)
    try:
        yield Running(home, control, pidfile, log, pid)
    finally:
        # The keeper running now: after a reload it is another process than the first.
        for keeper in {pid, read_pid(pidfile) or pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(keeper, signal.SIGTERM)
            _wait_gone(keeper)


def _wait_gone(pid: int, timeout: float = 15.0) -> None:
    """Wait for `pid` to end; SIGKILL it when it has not within `timeout`."""
    if not wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)


async def status(proxy: Running) -> dict[str, Any]:
    return await proxy.client.call({"op": "status"})


@dataclass
class Load:
    """Keep-alive clients and clients that connect anew for each request, until stopped."""

    port: int
    ok: int = 0
    refused: int = 0
    failed: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def keepalive(self) -> None:
        while not self.stop.is_set():
            try:
                r, w = await connect(self.port)
            except ConnectionRefusedError:
                self.refused += 1
                continue
            try:
                while not self.stop.is_set():
                    resp = await get(r, w)
                    if resp.status != 200:
                        self.failed.append(f"status {resp.status}")
                    else:
                        self.ok += 1
                    if resp.header("connection") == "close":
                        break
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.failed.append(repr(exc))  # in flight on a worker that died: reconnect
            finally:
                w.close()

    async def fresh(self) -> None:
        while not self.stop.is_set():
            try:
                r, w = await connect(self.port)
            except ConnectionRefusedError:
                self.refused += 1
                continue
            try:
                resp = await get(r, w, extra="Connection: close\r\n")
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failed.append(f"status {resp.status}")
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.failed.append(repr(exc))
            finally:
                w.close()

    def start(self, keepalive: int, fresh: int) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.keepalive()) for _ in range(keepalive)] + [
            asyncio.create_task(self.fresh()) for _ in range(fresh)
        ]


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_killed_under_load_refuses_nothing(tmp_path: Path, workers: int) -> None:
    """kill -9 of a worker: the port keeps accepting; only requests in flight on it fail."""
    with running_proxy(tmp_path, workers) as proxy:

        async def scenario() -> None:
            async with upstreams(("blue", named("blue"))) as (blue,):
                port = await free_port()
                await proxy.client.set_route(
                    "dev/web", (LOCAL, port), [Backend("blue", LOCAL, blue.port)]
                )
                load = Load(port)
                tasks = load.start(keepalive=6, fresh=6)
                await wait_for(lambda: load.ok >= 200)
                before = await status(proxy)
                victim = before["workers"][0]
                os.kill(victim["pid"], signal.SIGKILL)

                # The keeper restarts it in the same slot; meanwhile the port keeps accepting.
                async def restarted() -> bool:
                    now = await status(proxy)
                    slots = {w["slot"]: w for w in now["workers"]}
                    new = slots.get(victim["slot"])
                    return new is not None and new["pid"] != victim["pid"] and new["restarts"] == 1

                for _ in range(500):
                    if await restarted():
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError("the keeper did not restart the worker")
                served = load.ok
                await wait_for(lambda: load.ok >= served + 300)
                load.stop.set()
                await asyncio.gather(*tasks)
                assert load.refused == 0
                # At most the 12 connections of the load were on the killed worker.
                assert len(load.failed) <= 12, load.failed
                assert all("Error" in f for f in load.failed), load.failed  # no 5xx
                after = await status(proxy)
                assert len(after["workers"]) == workers
                assert (await proxy.client.ping())["pid"] == proxy.pid  # the keeper lived on

        run(scenario(), timeout=60)
    assert "exited with code -9: restarting it" in proxy.log.read_text()


async def _spread(proxy: Running, port: int, extra: str = "") -> list[bytes]:
    """Requests on new connections until every worker has served some; their bodies."""
    bodies: list[bytes] = []
    for _ in range(100):
        for _ in range(20):
            r, w = await connect(port)
            try:
                resp = await get(r, w, extra=extra)
                assert resp.status == 200
                bodies.append(resp.body)
            finally:
                w.close()
        workers = (await status(proxy))["workers"]
        if all(w["requests"] > 0 for w in workers):
            return bodies
    raise AssertionError("the requests never reached every worker")


def test_routes_and_counters_are_the_same_on_every_worker(tmp_path: Path) -> None:
    with running_proxy(tmp_path, 2) as proxy:

        async def scenario() -> None:
            async with upstreams(("blue", named("blue")), ("green", named("green"))) as (
                blue,
                green,
            ):
                port = await free_port()
                client = proxy.client
                await client.set_route(
                    "dev/web", (LOCAL, port), [Backend("blue", LOCAL, blue.port)]
                )
                first = await _spread(proxy, port)
                assert set(first) == {b"blue"}
                # The answer to set_route comes when every worker has the new route: from then
                # on no worker sends anything to blue.
                await client.set_route(
                    "dev/web", (LOCAL, port), [Backend("green", LOCAL, green.port)]
                )
                second = await _spread(proxy, port)
                assert set(second) == {b"green"}
                stats = (await client.stats())["routes"]["dev/web"]["colors"]
                assert stats["blue"]["requests"] == len(first)
                assert stats["green"]["requests"] == len(second)
                assert stats["green"]["responses"]["2xx"] == len(second)
                assert stats["green"]["latency_buckets"][-1][1] == len(second)
                assert stats["blue"]["inflight"] == stats["green"]["inflight"] == 0
                workers = (await status(proxy))["workers"]
                assert len(workers) == 2
                assert sum(w["requests"] for w in workers) == len(first) + len(second)
                # A new listen address reaches every worker too (the keeper binds it).
                moved = await free_port()
                await client.set_route(
                    "dev/web", (LOCAL, moved), [Backend("green", LOCAL, green.port)]
                )
                assert set(await _spread(proxy, moved)) == {b"green"}
                with pytest.raises(OSError):
                    await connect(port)
                await client.remove_route("dev/web")
                assert (await client.stats())["routes"] == {}
                with pytest.raises(OSError):
                    await connect(moved)

        run(scenario(), timeout=60)


def test_sticky_cookie_holds_across_workers(tmp_path: Path) -> None:
    with running_proxy(tmp_path, 2) as proxy:

        async def scenario() -> None:
            async with upstreams(("blue", named("blue")), ("green", named("green"))) as (
                blue,
                green,
            ):
                port = await free_port()
                await proxy.client.set_route(
                    "dev/web",
                    (LOCAL, port),
                    [
                        Backend("green", LOCAL, green.port, 50),
                        Backend("blue", LOCAL, blue.port, 50),
                    ],
                    sticky={"cookie": "canary"},
                )
                r, w = await connect(port)
                resp = await get(r, w)
                w.close()
                cookie = resp.header("set-cookie")
                assert cookie is not None and cookie.startswith("canary=")
                color = cookie.split(";")[0].split("=")[1]
                bodies = await _spread(proxy, port, extra=f"Cookie: canary={color}\r\n")
                # Every worker served some of them, and every one went to the same colour.
                assert set(bodies) == {color.encode()}
                # Header mode is a hash of the value: the same on every worker too.
                await proxy.client.set_route(
                    "dev/web",
                    (LOCAL, port),
                    [
                        Backend("green", LOCAL, green.port, 50),
                        Backend("blue", LOCAL, blue.port, 50),
                    ],
                    sticky={"header": "X-User"},
                )
                for user in ("alice", "bob", "carol"):
                    await proxy.client.call({"op": "stats"})  # a fresh poll of the workers
                    before = [w["requests"] for w in (await status(proxy))["workers"]]
                    bodies = await _spread_from(proxy, port, f"X-User: {user}\r\n", before)
                    assert len(set(bodies)) == 1, (user, bodies)

        run(scenario(), timeout=60)


async def _spread_from(proxy: Running, port: int, extra: str, before: list[int]) -> list[bytes]:
    """Like _spread, but every worker must serve some requests beyond its count `before`."""
    bodies: list[bytes] = []
    for _ in range(100):
        for _ in range(20):
            r, w = await connect(port)
            try:
                bodies.append((await get(r, w, extra=extra)).body)
            finally:
                w.close()
        now = [w["requests"] for w in (await status(proxy))["workers"]]
        if all(n > b for n, b in zip(now, before, strict=True)):
            return bodies
    raise AssertionError("the requests never reached every worker")


def test_one_worker_serves_like_the_single_process(tmp_path: Path) -> None:
    """workers = 1: one worker; ping, set_route, stats, status and SIGTERM as before."""
    with running_proxy(tmp_path, 1) as proxy:

        async def scenario() -> None:
            async with upstreams(("blue", named("blue"))) as (blue,):
                port = await free_port()
                await proxy.client.set_route(
                    "dev/web", (LOCAL, port), [Backend("blue", LOCAL, blue.port)]
                )
                r, w = await connect(port)
                for _ in range(5):
                    assert (await get(r, w)).body == b"blue"
                w.close()
                st = await status(proxy)
                assert st["pid"] == proxy.pid and len(st["workers"]) == 1
                assert st["workers"][0]["requests"] == 5
                ping = await proxy.client.ping()
                assert ping["pid"] == proxy.pid and ping["version"]
                assert (await proxy.client.stats())["routes"]["dev/web"]["colors"]["blue"][
                    "requests"
                ] == 5

        run(scenario(), timeout=30)
        worker = run(status(proxy))["workers"][0]["pid"]
        os.kill(proxy.pid, signal.SIGTERM)
        _wait_gone(proxy.pid)
        _wait_gone(worker, 5.0)
        assert not proxy.pidfile.exists() and not proxy.control.exists()


def test_workers_argument_is_checked(tmp_path: Path) -> None:
    for bad, message in (("0", "between 1 and 64"), ("many", 'must be "auto" or a number')):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "conveyor.proxy",
                "--control",
                str(tmp_path / "s"),
                "--pidfile",
                str(tmp_path / "p"),
                "--workers",
                bad,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2 and message in proc.stderr


def test_header_timeout_holds_on_every_worker_and_a_restarted_worker_gets_the_table(
    tmp_path: Path,
) -> None:
    """Limits are per connection: a slow request head gets its 408 whichever worker holds it,
    also the worker started after a crash (it got the route table, limits included, first)."""
    with running_proxy(tmp_path, 2) as proxy:

        async def scenario() -> None:
            async with upstreams(("blue", named("blue"))) as (blue,):
                port = await free_port()
                await proxy.client.set_route(
                    "dev/web",
                    (LOCAL, port),
                    [Backend("blue", LOCAL, blue.port)],
                    {"header_timeout": 0.3},
                )
                victim = (await status(proxy))["workers"][1]
                os.kill(victim["pid"], signal.SIGKILL)

                async def restarted() -> bool:
                    workers = (await status(proxy))["workers"]
                    return len(workers) == 2 and victim["pid"] not in {w["pid"] for w in workers}

                for _ in range(500):
                    if await restarted():
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError("the keeper did not restart the worker")
                # Slow heads on many connections: the kernel hands them to both workers.
                loop = asyncio.get_running_loop()
                for _ in range(20):
                    conns = [await connect(port) for _ in range(16)]
                    began = loop.time()
                    for _, w in conns:
                        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n")  # never finished
                    for r, w in conns:
                        answer = await asyncio.wait_for(r.read(), 5.0)
                        assert answer.startswith(b"HTTP/1.1 408 "), answer
                        w.close()
                    assert loop.time() - began < 2.0
                    # A worker without the route's limits would have taken 10 s (the default).
                    if await _both_served(proxy, port):
                        return
                raise AssertionError("the connections never reached both workers")

        run(scenario(), timeout=90)


async def _both_served(proxy: Running, port: int) -> bool:
    """Whether both workers (the restarted one too) have served requests of the route."""
    for _ in range(50):
        r, w = await connect(port)
        try:
            assert (await get(r, w)).body == b"blue"
        finally:
            w.close()
    return all(w["requests"] > 0 for w in (await status(proxy))["workers"])


def test_a_switch_does_not_wait_for_a_worker_that_is_not_running(tmp_path: Path) -> None:
    """A switch goes through shared memory (table.py): done when the keeper wrote it, even with
    a worker stopped (SIGSTOP: as a worker the scheduler keeps off the core); that worker's next
    request, once it runs again, goes to the new colour."""
    with running_proxy(tmp_path, 2) as proxy:

        async def scenario() -> None:
            async with upstreams(("blue", named("blue")), ("green", named("green"))) as (
                blue,
                green,
            ):
                port = await free_port()
                client = proxy.client
                await client.set_route(
                    "dev/web", (LOCAL, port), [Backend("blue", LOCAL, blue.port)]
                )
                assert set(await _spread(proxy, port)) == {b"blue"}
                stopped = (await status(proxy))["workers"][1]["pid"]
                os.kill(stopped, signal.SIGSTOP)
                try:
                    began = asyncio.get_running_loop().time()
                    await client.set_route(
                        "dev/web", (LOCAL, port), [Backend("green", LOCAL, green.port)]
                    )
                    assert asyncio.get_running_loop().time() - began < 1.0
                finally:
                    os.kill(stopped, signal.SIGCONT)
                before = [w["requests"] for w in (await status(proxy))["workers"]]
                assert set(await _spread_from(proxy, port, "", before)) == {b"green"}

        run(scenario(), timeout=60)
