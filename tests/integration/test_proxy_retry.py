"""Retries on the route's fallback (the standby color), over real sockets.

A request that got no byte of a response may go to the fallback, once: always when the connect
was refused, and for a whole idempotent request when the connection was reset or closed. Never
after a response began, never for POST or PATCH once the backend had it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from test_proxy_support import (
    LOCAL,
    Request,
    Response,
    Upstream,
    connect,
    free_port,
    read_response,
    reply,
    run,
    upstreams,
    wait_for,
)

from conveyor.proxy.server import Proxy
from conveyor.routers.base import Backend, RouterError, Split
from conveyor.routers.builtin import BuiltinRouter
from conveyor.routers.kinds import FALLBACK

Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool | None]]


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as the kernel does for a process killed mid-request
    with bytes unread."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def resets(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    reset(writer)
    return True


async def closes(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.close()  # a FIN, not a byte of answer
    return True


async def half_answers(
    req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    await writer.drain()
    writer.close()
    return True


async def echoes(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    reply(writer, 200, f"standby {req.method} {req.target} ".encode() + req.body)


def standby(up: Upstream) -> dict[str, Any]:
    return {"color": "blue", "host": LOCAL, "port": up.port, "weight": 100}


@contextlib.asynccontextmanager
async def route(
    live: dict[str, Any],
    fallback: list[dict[str, Any]] | None,
    limits: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Proxy, int]]:
    """An in-process proxy with dev/web -> `live` (green), falling back on `fallback`."""
    proxy = Proxy(asyncio.get_running_loop())
    port = await free_port()
    await proxy.set_route("dev/web", [LOCAL, port], [live], limits, None, fallback)
    try:
        yield proxy, port
    finally:
        await proxy.drain(0.5)


def green(up: Upstream | None = None, port: int = 0) -> dict[str, Any]:
    return {"color": "green", "host": LOCAL, "port": up.port if up else port, "weight": 100}


async def ask(port: int, method: str, body: bytes = b"", target: str = "/x") -> Response:
    r, w = await connect(port)
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n"
        w.write(head.encode() + body)
        return await asyncio.wait_for(read_response(r, method), 10)
    finally:
        w.close()


def colors(proxy: Proxy) -> dict[str, Any]:
    return proxy.stats_json()["dev/web"]["colors"]  # type: ignore[no-any-return]


def test_a_refused_connect_goes_to_the_fallback_for_any_method() -> None:
    async def scenario() -> None:
        dead = await free_port()
        async with (
            upstreams(("blue", echoes)) as (blue,),
            route(green(port=dead), [standby(blue)], {"retries": 0}) as (proxy, port),
        ):
            for method in ("GET", "POST", "PATCH", "DELETE"):
                resp = await ask(port, method, b"data")
                assert resp.status == 200, method
                assert resp.body == f"standby {method} /x data".encode()
            stats = colors(proxy)
            assert stats["green"]["retries"] == {"refused": 4, "reset": 0}
            # The failure stays on the color that failed (the analysis sees it), the request
            # and its answer on the one that answered.
            assert stats["green"]["upstream_errors"] == 4
            assert (stats["green"]["requests"], stats["green"]["responses"]["2xx"]) == (0, 0)
            assert (stats["blue"]["requests"], stats["blue"]["responses"]["2xx"]) == (4, 4)
            assert stats["green"]["inflight"] == stats["blue"]["inflight"] == 0

    run(scenario())


@pytest.mark.parametrize("death", [resets, closes], ids=["reset", "closed"])
def test_a_connection_lost_before_any_byte_is_retried_for_idempotent_methods_only(
    death: Handler,
) -> None:
    async def scenario() -> None:
        async with (
            upstreams(("green", death), ("blue", echoes)) as (dying, blue),
            route(green(dying), [standby(blue)]) as (proxy, port),
        ):
            for method in ("GET", "HEAD", "OPTIONS", "DELETE"):
                resp = await ask(port, method)
                assert resp.status == 200, method
            resp = await ask(port, "PUT", b"the whole body")
            assert (resp.status, resp.body) == (200, b"standby PUT /x the whole body")
            # POST and PATCH may have been acted on: never sent twice.
            for method in ("POST", "PATCH"):
                assert (await ask(port, method, b"x")).status == 502, method
            assert [r.method for r in blue.requests] == ["GET", "HEAD", "OPTIONS", "DELETE", "PUT"]
            assert len(dying.requests) == 7
            stats = colors(proxy)["green"]
            assert stats["retries"] == {"refused": 0, "reset": 5}
            assert stats["upstream_errors"] == 7 and stats["responses"]["5xx"] == 2

    run(scenario())


def test_a_response_that_began_is_never_retried() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("green", half_answers), ("blue", echoes)) as (dying, blue),
            route(green(dying), [standby(blue)]) as (proxy, port),
        ):
            r, w = await connect(port)
            w.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            # The client gets what came, then the connection is cut: nothing else is honest.
            assert await asyncio.wait_for(r.read(), 10) == b"partial"
            w.close()
            assert blue.requests == []
            assert colors(proxy)["green"]["retries"] == {"refused": 0, "reset": 0}

    run(scenario())


def test_one_retry_at_most() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("green", resets), ("blue", resets)) as (dying, also_dying),
            route(green(dying), [standby(also_dying)]) as (proxy, port),
        ):
            assert (await ask(port, "GET")).status == 502
            assert len(dying.requests) == len(also_dying.requests) == 1
            stats = colors(proxy)
            assert stats["green"]["retries"]["reset"] == 1
            assert stats["blue"]["retries"]["reset"] == 0  # the second failure was not retried
            assert stats["blue"]["upstream_errors"] == 1

    run(scenario())


def test_a_request_still_arriving_is_not_retried_after_a_reset() -> None:
    async def scenario() -> None:
        got_head = asyncio.Event()

        async def resets_on_the_head(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            got_head.set()
            reset(w)

        server = await asyncio.start_server(resets_on_the_head, LOCAL, 0)
        dying_port = server.sockets[0].getsockname()[1]
        try:
            async with (
                upstreams(("blue", echoes)) as (blue,),
                route(green(port=dying_port), [standby(blue)]) as (_proxy, port),
            ):
                r, w = await connect(port)
                # The body is not all there when the backend goes: the proxy cannot send it whole.
                w.write(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf")
                assert (await asyncio.wait_for(read_response(r), 10)).status == 502
                w.close()
                assert got_head.is_set() and blue.requests == []
        finally:
            server.close()

    run(scenario())


def test_a_switch_back_that_comes_first_still_gets_the_retry() -> None:
    async def scenario() -> None:
        die = asyncio.Event()

        async def holds_then_resets(
            req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> bool:
            await die.wait()
            reset(writer)
            return True

        async with (
            upstreams(("green", holds_then_resets), ("blue", echoes)) as (dying, blue),
            route(green(dying), [standby(blue)]) as (proxy, port),
        ):
            asking = asyncio.create_task(ask(port, "GET"))
            await wait_for(lambda: len(dying.requests) == 1)
            # The engine switched back (blue live, no fallback) before the reset reached us.
            await proxy.set_route("dev/web", [LOCAL, port], [standby(blue)], None)
            die.set()
            resp = await asking
            assert (resp.status, resp.body) == (200, b"standby GET /x ")
            assert colors(proxy)["green"]["retries"]["reset"] == 1

    run(scenario())


def test_without_a_fallback_a_lost_connection_is_a_502_as_before() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("green", resets)) as (dying,),
            route(green(dying), None) as (proxy, port),
        ):
            assert (await ask(port, "GET")).status == 502
            assert colors(proxy)["green"]["retries"] == {"refused": 0, "reset": 0}

    run(scenario())


def test_a_backend_that_dies_with_pooled_connections_costs_no_get() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("green", echoes), ("blue", echoes)) as (live, blue),
            route(green(live), [standby(blue)]) as (proxy, port),
        ):
            clients = [await connect(port) for _ in range(8)]

            async def one(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
                w.write(b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n")
                return (await asyncio.wait_for(read_response(r), 10)).status

            assert await asyncio.gather(*(one(r, w) for r, w in clients)) == [200] * 8
            await wait_for(lambda: bool(proxy.state.pool.idle.get((LOCAL, live.port))))
            await live.stop()  # every connection and the listener gone at once
            for _ in range(3):
                assert await asyncio.gather(*(one(r, w) for r, w in clients)) == [200] * 8
            for _r, w in clients:
                w.close()
            stats = colors(proxy)
            assert stats["blue"]["responses"]["2xx"] == 24
            assert sum(stats["green"]["retries"].values()) == 24

    run(scenario())


def test_the_builtin_router_carries_the_fallback_through_the_control_socket(
    tmp_path: Any,
) -> None:
    async def scenario() -> None:
        home = tmp_path
        router = BuiltinRouter(home, home / "proxy.sock", home / "proxy.pid", home / "proxy.log")
        assert FALLBACK in router.features
        await router.ensure()
        try:
            dead = await free_port()
            async with upstreams(("blue", echoes)) as (blue,):
                port = await free_port()
                spare = Backend("blue", LOCAL, blue.port)
                split = Split(
                    "dev/web", LOCAL, port, (Backend("green", LOCAL, dead),), fallback=(spare,)
                )
                await router.apply(split)
                ping = await router.client.ping()
                assert ping["routes"]["dev/web"]["fallback"] == [spare.to_json()]
                assert (await ask(port, "GET")).status == 200
                counters = await router.counters("dev/web")
                assert counters is not None
                assert counters["green"].get("retries") == {"refused": 1, "reset": 0}
                # A bad fallback is refused whole: the route stays as it was.
                with pytest.raises(RouterError, match=r"fallback\[0\]\.port must be a TCP port"):
                    await router.client.call(
                        {
                            "op": "set_route",
                            "name": "dev/web",
                            "listen": [LOCAL, port],
                            "backends": [spare.to_json()],
                            "fallback": [{**spare.to_json(), "port": 0}],
                        }
                    )
                assert (await router.client.ping())["routes"] == ping["routes"]
                # Without it, the route has none: a refused connect is a 502 again.
                await router.apply(Split("dev/web", LOCAL, port, split.backends))
                assert (await router.client.ping())["routes"]["dev/web"]["fallback"] == []
                assert (await ask(port, "GET")).status == 502
        finally:
            await router.shutdown()

    run(scenario(), timeout=60)
