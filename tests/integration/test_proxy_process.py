"""The proxy as a real process: start_proxy, the control protocol, swaps under load, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_proxy_support import (
    LOCAL,
    Request,
    Running,
    connect,
    free_port,
    get,
    named,
    read_response,
    reply,
    run,
    upstreams,
    wait_for,
    wait_gone,
)

from conveyor.routers.base import Backend, ProxyUnavailable, RouterError
from conveyor.routers.builtin import ProxyClient, ping_sync, read_pid, start_proxy


@pytest.fixture
def proxy_proc() -> Iterator[Running]:
    home = Path(tempfile.mkdtemp(prefix="cv", dir="/tmp"))
    control, pidfile, log = home / "proxy.sock", home / "proxy.pid", home / "logs" / "proxy.log"
    pid = start_proxy(home, control, pidfile, log)
    try:
        yield Running(home, control, pidfile, log, pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        shutil.rmtree(home, ignore_errors=True)


def test_start_ping_pidfile_and_socket_mode(proxy_proc: Running) -> None:
    assert read_pid(proxy_proc.pidfile) == proxy_proc.pid
    mode = stat.S_IMODE(proxy_proc.control.stat().st_mode)
    assert mode == 0o600
    answer = ping_sync(proxy_proc.control)
    assert answer["pid"] == proxy_proc.pid
    assert answer["routes"] == {}
    assert "started" in proxy_proc.log.read_text()
    # Starting again finds the running one instead of launching a second.
    again = start_proxy(proxy_proc.home, proxy_proc.control, proxy_proc.pidfile, proxy_proc.log)
    assert again == proxy_proc.pid


def test_control_protocol_round_trip(proxy_proc: Running) -> None:
    async def scenario() -> None:
        client = ProxyClient(proxy_proc.control)
        async with upstreams(("blue", named("blue"))) as (blue,):
            port = await free_port()
            await client.set_route(
                "dev/web",
                (LOCAL, port),
                [Backend("blue", LOCAL, blue.port, 100)],
                {"upstream_timeout": 7.5, "unknown_field": 1},
            )
            ping = await client.ping()
            route = ping["routes"]["dev/web"]
            assert route["listen"] == [LOCAL, port]
            assert route["backends"] == [
                {"color": "blue", "host": LOCAL, "port": blue.port, "weight": 100}
            ]
            assert route["limits"]["upstream_timeout"] == 7.5
            assert route["limits"]["max_headers"] == 100

            r, w = await connect(port)
            for _ in range(3):
                assert (await get(r, w)).body == b"blue"
            w.close()

            stats = await client.stats()
            blue_stats = stats["routes"]["dev/web"]["colors"]["blue"]
            assert blue_stats["requests"] == 3
            assert blue_stats["responses"] == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 0}
            assert blue_stats["upstream_errors"] == 0
            assert blue_stats["inflight"] == 0
            buckets = blue_stats["latency_buckets"]
            assert [b[0] for b in buckets] == [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, "+Inf",
            ]  # fmt: skip
            assert buckets[-1][1] == 3
            assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
            assert blue_stats["latency_sum"] > 0

            # A bind failure: error, and the previous table stays.
            with socket.socket() as busy:
                busy.bind((LOCAL, 0))
                busy.listen()
                busy_port = busy.getsockname()[1]
                with pytest.raises(RouterError, match=f"cannot listen on 127.0.0.1:{busy_port}: "):
                    await client.set_route(
                        "dev/web", (LOCAL, busy_port), [Backend("green", LOCAL, 1, 100)]
                    )
            assert (await client.ping())["routes"]["dev/web"] == route

            with pytest.raises(RouterError, match="weight"):
                await client.set_route("dev/web", (LOCAL, port), [Backend("blue", LOCAL, 1, -1)])
            with pytest.raises(RouterError, match="unknown op"):
                await client.call({"op": "frobnicate"})

            await client.remove_route("dev/web")
            assert (await client.ping())["routes"] == {}
            with pytest.raises(OSError):
                await connect(port)

    run(scenario())


def test_zero_downtime_under_swaps(proxy_proc: Running) -> None:
    async def scenario() -> None:
        client = ProxyClient(proxy_proc.control)
        async with upstreams(("blue", named("blue")), ("green", named("green"))) as (
            blue,
            green,
        ):
            port = await free_port()
            colors = [Backend("blue", LOCAL, blue.port), Backend("green", LOCAL, green.port)]
            await client.set_route("dev/web", (LOCAL, port), [colors[0]])
            stop = asyncio.Event()
            seen: dict[bytes, int] = {}
            failures: list[str] = []

            async def hammer() -> None:
                r, w = await connect(port)
                try:
                    while not stop.is_set():
                        resp = await get(r, w)
                        if resp.status != 200:
                            failures.append(f"{resp.status} {resp.body!r}")
                        seen[resp.body] = seen.get(resp.body, 0) + 1
                except Exception as exc:  # reported below: any failure fails the test
                    failures.append(repr(exc))
                finally:
                    w.close()

            workers = [asyncio.create_task(hammer()) for _ in range(8)]
            for i in range(20):
                before = sum(seen.values())
                await client.set_route("dev/web", (LOCAL, port), [colors[(i + 1) % 2]])
                # Let some requests through on this colour before the next swap.
                await wait_for(lambda b=before: sum(seen.values()) >= b + 16 or bool(failures))
            stop.set()
            await asyncio.gather(*workers)
            assert failures == []
            assert seen.get(b"blue", 0) > 0 and seen.get(b"green", 0) > 0
            assert set(seen) == {b"blue", b"green"}

            stats = (await client.stats())["routes"]["dev/web"]["colors"]
            total = sum(seen.values())
            assert stats["blue"]["requests"] + stats["green"]["requests"] == total
            assert stats["blue"]["responses"]["2xx"] == seen[b"blue"]
            assert stats["green"]["responses"]["2xx"] == seen[b"green"]
            assert stats["blue"]["inflight"] == 0 and stats["green"]["inflight"] == 0
            assert stats["blue"]["upstream_errors"] == 0

    run(scenario(), timeout=90)


def test_sigterm_drains_inflight_then_exits(proxy_proc: Running) -> None:
    async def scenario() -> None:
        client = ProxyClient(proxy_proc.control)
        release = asyncio.Event()

        async def slow(
            req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await release.wait()
            reply(writer, 200, b"finished")

        async with upstreams(("blue", slow)) as (up,):
            port = await free_port()
            await client.set_route("dev/web", (LOCAL, port), [Backend("blue", LOCAL, up.port)])
            r, w = await connect(port)
            w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await wait_for(lambda: len(up.requests) == 1)
            os.kill(proxy_proc.pid, signal.SIGTERM)
            # Stops accepting while the request is still in flight...
            await wait_for(lambda: not proxy_proc.control.exists())
            release.set()
            # ...which still gets its answer.
            resp = await read_response(r)
            assert resp.status == 200
            assert resp.body == b"finished"
            w.close()

    run(scenario())
    assert wait_gone(proxy_proc.pid)
    assert not proxy_proc.pidfile.exists()
    assert read_pid(proxy_proc.pidfile) is None


def test_shutdown_op_and_unavailable_afterwards(proxy_proc: Running) -> None:
    async def scenario() -> None:
        client = ProxyClient(proxy_proc.control, timeout=2.0)
        await client.shutdown()
        await wait_for(lambda: not proxy_proc.pidfile.exists())
        with pytest.raises(ProxyUnavailable):
            await client.ping()

    run(scenario())
    assert wait_gone(proxy_proc.pid)


def test_keeps_serving_when_control_client_vanishes(proxy_proc: Running) -> None:
    async def scenario() -> None:
        client = ProxyClient(proxy_proc.control)
        async with upstreams(("blue", named("blue"))) as (blue,):
            port = await free_port()
            await client.set_route("dev/web", (LOCAL, port), [Backend("blue", LOCAL, blue.port)])
            # A control client that dies mid-request, and one that sends garbage.
            for junk in (b'{"op": "set_ro', b"not json\n"):
                r, w = await asyncio.open_unix_connection(str(proxy_proc.control))
                w.write(junk)
                await w.drain()
                w.transport.abort()
            r, w = await connect(port)
            assert (await get(r, w)).body == b"blue"
            w.close()
            assert (await client.ping())["pid"] == proxy_proc.pid

    run(scenario())


def test_client_raises_unavailable_without_proxy() -> None:
    home = Path(tempfile.mkdtemp(prefix="cv", dir="/tmp"))
    try:

        async def scenario() -> None:
            with pytest.raises(ProxyUnavailable):
                await ProxyClient(home / "nothing.sock", timeout=1.0).ping()

        run(scenario())
        assert read_pid(home / "missing.pid") is None
    finally:
        shutil.rmtree(home, ignore_errors=True)
