"""The HAProxy router against real HAProxy processes and real upstream servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_proxy_support import LOCAL, Request, free_port, reply, run, upstreams, wait_for

from conftest import unavailable
from conveyor.loadgen import LoadGenerator, LoadResult
from conveyor.routers.base import Backend, RouterError, Split
from conveyor.routers.haproxy import HaproxyRouter

ROUTE = "dev/web"


@pytest.fixture(autouse=True)
def _haproxy() -> None:
    if shutil.which("/usr/sbin/haproxy") is None:
        unavailable("HAProxy is not installed (/usr/sbin/haproxy; Debian package haproxy)")


def versioned(name: str, fail: str = "/fail", hold: asyncio.Event | None = None):  # type: ignore[no-untyped-def]
    """An upstream that names itself in X-Demo-Version, answers 500 on `fail`, and waits for
    `hold` on /slow."""

    async def handler(
        req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if req.target == "/slow" and hold is not None:
            await hold.wait()
        status = 500 if req.target == fail else 200
        reply(writer, status, f"hello from {name}\n".encode(), {"X-Demo-Version": name})

    return name, handler


def split(port: int, *backends: tuple[str, int, int], **options: object) -> Split:
    return Split(
        route=ROUTE,
        host=LOCAL,
        port=port,
        backends=tuple(Backend(color, LOCAL, p, w) for color, p, w in backends),
        options={"haproxy": dict(options)} if options else {},
    )


@contextlib.asynccontextmanager
async def router(home: Path) -> AsyncIterator[HaproxyRouter]:
    r = HaproxyRouter(home, home / "haproxy.log")
    try:
        yield r
    finally:
        await r.shutdown()
        for inst in r.instances.values():  # whatever a failed test left running
            pid = inst.pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)


async def fetch(port: int, path: str = "/") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    version = next(
        (
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("x-demo-version")
        ),
        "",
    )
    return int(head.split()[1]), version


def load(port: int) -> LoadGenerator:
    return LoadGenerator(LOCAL, port, connections=8, max_seconds=60).start()


async def requests(port: int, n: int) -> LoadResult:
    """`n` requests over 4 keep-alive connections; what they got."""
    gen = LoadGenerator(LOCAL, port, connections=4, max_requests=n, max_seconds=60).start()
    await wait_for(lambda: sum(gen.versions().values()) + gen.snapshot()[1] >= n, 60)
    return await asyncio.to_thread(gen.stop)


def test_switch_blue_to_green_under_load_fails_no_request(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            upstreams(versioned("blue"), versioned("green")) as (blue, green),
            router(tmp_path) as r,
        ):
            port = await free_port()
            assert await r.ensure() is True  # nothing runs yet: the engine applies its table
            await r.apply(split(port, ("blue", blue.port, 100)))
            assert await fetch(port) == (200, "blue")
            gen = await asyncio.to_thread(load, port)
            try:
                await wait_for(lambda: gen.versions()["blue"] > 200, 20)
                pid = r.instances[ROUTE].pid()
                await r.apply(split(port, ("green", green.port, 100)))
                await wait_for(lambda: gen.versions()["green"] > 200, 20)
                # ... and back, through the runtime API again: the same process throughout.
                await r.apply(split(port, ("blue", blue.port, 100)))
                seen = gen.versions()["blue"]
                await wait_for(lambda: gen.versions()["blue"] > seen + 200, 20)
                assert r.instances[ROUTE].pid() == pid
            finally:
                result = await asyncio.to_thread(gen.stop)
            assert result.failed == 0, (result.statuses, result.error_samples)
            counters = await r.counters(ROUTE)
            assert counters is not None
            assert counters["green"]["requests"] >= 200
            assert counters["green"]["responses"]["2xx"] == counters["green"]["requests"]
            assert await r.inflight(ROUTE, "green") == 0

    run(main(), timeout=90)


def test_canary_weights_are_roughly_honoured(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            upstreams(versioned("blue"), versioned("green")) as (blue, green),
            router(tmp_path) as r,
        ):
            port = await free_port()
            await r.apply(split(port, ("green", green.port, 10), ("blue", blue.port, 90)))
            result = await requests(port, 2000)
            assert result.failed == 0
            share = result.versions["green"] / result.requests
            assert 0.05 < share < 0.16, result.versions
            await r.apply(split(port, ("green", green.port, 50), ("blue", blue.port, 50)))
            result = await requests(port, 2000)
            assert 0.4 < result.versions["green"] / result.requests < 0.6, result.versions

    run(main(), timeout=90)


def test_drain_waits_for_the_request_in_flight(tmp_path: Path) -> None:
    async def main() -> None:
        hold = asyncio.Event()
        async with (
            upstreams(versioned("blue", hold=hold), versioned("green")) as (
                blue,
                green,
            ),
            router(tmp_path) as r,
        ):
            port = await free_port()
            await r.apply(split(port, ("blue", blue.port, 100)))
            slow = asyncio.ensure_future(fetch(port, "/slow"))
            await wait_for(lambda: len(blue.requests) == 1)
            await r.apply(split(port, ("green", green.port, 100)))
            assert await r.inflight(ROUTE, "blue") == 1  # blue drains: its request goes on
            assert await fetch(port) == (200, "green")
            hold.set()
            assert await slow == (200, "blue")
            assert await r.inflight(ROUTE, "blue") == 0

    run(main())


def test_counters_count_5xx_per_color_and_refused_connections(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            upstreams(versioned("blue"), versioned("green")) as (blue, green),
            router(tmp_path) as r,
        ):
            port = await free_port()
            await r.apply(split(port, ("green", green.port, 50), ("blue", blue.port, 50)))
            for _ in range(20):
                await fetch(port, "/fail")
            for _ in range(10):
                await fetch(port)
            counters = await r.counters(ROUTE)
            assert counters is not None
            for color in ("blue", "green"):
                c = counters[color]
                assert c["requests"] == c["responses"]["5xx"] + c["responses"]["2xx"]
                assert c["responses"]["5xx"] == 10, counters
                assert c["upstream_errors"] == 0
            # A color that is not listening: HAProxy's own 503 after its retries.
            dead = await free_port()
            await r.apply(split(port, ("green", dead, 100)))
            assert (await fetch(port))[0] == 503
            counters = await r.counters(ROUTE)
            assert counters is not None and counters["green"]["upstream_errors"] >= 1, counters

    run(main())


def test_a_new_router_adopts_the_running_haproxy(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            upstreams(versioned("blue"), versioned("green")) as (blue, green),
            router(tmp_path) as first,
        ):
            port = await free_port()
            await first.apply(split(port, ("blue", blue.port, 100)))
            await fetch(port)
            pid = first.instances[ROUTE].pid()
            second = HaproxyRouter(tmp_path, tmp_path / "haproxy.log")
            assert await second.ensure() is False  # adopted: nothing to apply again
            counters = await second.counters(ROUTE)
            assert counters is not None and counters["blue"]["requests"] == 1
            await second.apply(split(port, ("green", green.port, 100)))
            assert await fetch(port) == (200, "green")
            assert second.instances[ROUTE].pid() == pid
            # A pid file naming a process that is not our HAProxy is not ours to adopt.
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: second.instances[ROUTE].pid() is None)
            (second.instances[ROUTE].pidfile).write_text(f"{os.getpid()}\n")
            third = HaproxyRouter(tmp_path, tmp_path / "haproxy.log")
            assert await third.ensure() is True
            await third.apply(split(port, ("green", green.port, 100)))
            assert await fetch(port) == (200, "green")
            assert third.instances[ROUTE].pid() not in (None, pid, os.getpid())
            await third.shutdown()

    run(main())


def test_adding_and_removing_a_route_under_load_leaves_the_other_route_alone(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with (
            upstreams(versioned("blue"), versioned("green")) as (blue, green),
            router(tmp_path) as r,
        ):
            port, other = await free_port(), await free_port()
            await r.apply(split(port, ("blue", blue.port, 100)))
            pid = r.instances[ROUTE].pid()
            gen = await asyncio.to_thread(load, port)
            try:
                await wait_for(lambda: gen.snapshot()[0] > 200, 20)
                preview = Split(
                    "dev/web:preview", LOCAL, other, (Backend("green", LOCAL, green.port),)
                )
                await r.apply(preview)
                assert await fetch(other) == (200, "green")
                await r.remove("dev/web:preview")
                seen = gen.snapshot()[0]
                await wait_for(lambda: gen.snapshot()[0] > seen + 200, 20)
            finally:
                result = await asyncio.to_thread(gen.stop)
            assert result.failed == 0, (result.statuses, result.error_samples)
            assert r.instances[ROUTE].pid() == pid
            with pytest.raises(OSError):
                await fetch(other)

    run(main(), timeout=90)


def test_a_new_layout_replaces_the_process_and_keeps_the_counters(tmp_path: Path) -> None:
    # A deep project directory: the stats socket's path would be too long for HAProxy there.
    home = tmp_path / ("deep" * 20)
    home.mkdir()

    async def main() -> None:
        async with upstreams(versioned("blue")) as (blue,), router(home) as r:
            port = await free_port()
            await r.apply(split(port, ("blue", blue.port, 100)))
            for _ in range(5):
                await fetch(port)
            pid = r.instances[ROUTE].pid()
            await r.apply(split(port, ("blue", blue.port, 100), server_timeout=30.0))
            assert r.instances[ROUTE].pid() != pid
            assert "timeout server 30000ms" in r.instances[ROUTE].config.read_text()
            await fetch(port)
            counters = await r.counters(ROUTE)
            assert counters is not None and counters["blue"]["requests"] == 6

    run(main())


def test_a_port_in_use_is_a_router_error_and_the_running_route_stays(tmp_path: Path) -> None:
    async def main() -> None:
        async with upstreams(versioned("blue")) as (blue,), router(tmp_path) as r:
            with socket.socket() as taken:
                taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                taken.bind((LOCAL, 0))
                taken.listen()
                port = taken.getsockname()[1]
                with pytest.raises(RouterError) as err:
                    await r.apply(split(port, ("blue", blue.port, 100)))
                assert f"{LOCAL}:{port} did not start" in str(err.value)
                assert "cannot bind" in str(err.value)
                # A running route asked to move to that port stays where it is, as it was.
                free = await free_port()
                await r.apply(split(free, ("blue", blue.port, 100)))
                pid = r.instances[ROUTE].pid()
                config = r.instances[ROUTE].config.read_text()
                with pytest.raises(RouterError, match="cannot bind"):
                    await r.apply(split(port, ("blue", blue.port, 100)))
                assert r.instances[ROUTE].pid() == pid
                assert r.instances[ROUTE].config.read_text() == config
                assert await fetch(free) == (200, "blue")
            with pytest.raises(RouterError, match="HAProxy not found at /nowhere/haproxy"):
                await r.apply(
                    split(await free_port(), ("blue", 1234, 100), binary="/nowhere/haproxy")
                )

    run(main())
