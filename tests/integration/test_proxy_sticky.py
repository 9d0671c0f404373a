"""Canary splits over real sockets: weights, cookie and header stickiness, keep-alive timeout."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from test_proxy_support import (
    LOCAL,
    Request,
    Response,
    backend,
    connect,
    free_port,
    get,
    proxy_with_route,
    read_response,
    reply,
    run,
    upstreams,
    wait_for,
)

from conveyor.proxy.control import ControlServer
from conveyor.proxy.server import Proxy
from conveyor.routers.base import Backend, RouterError
from conveyor.routers.builtin import ProxyClient

COOKIE = {"cookie": "cv"}
ATTRIBUTES = "; Path=/; HttpOnly; SameSite=Lax"


def _named(name: str):  # type: ignore[no-untyped-def]
    async def handler(
        req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        reply(writer, 200, name.encode())

    return handler


def _colors() -> Any:
    return upstreams(("green", _named("green")), ("blue", _named("blue")))


async def _set(
    proxy: Proxy, port: int, backends: list[dict[str, Any]], sticky: object, **limits: Any
) -> None:
    await proxy.set_route("dev/web", [LOCAL, port], backends, limits or None, sticky)


async def _get(
    r: asyncio.StreamReader, w: asyncio.StreamWriter, extra: str = ""
) -> tuple[str, Response]:
    resp = await get(r, w, "/", extra)
    assert resp.status == 200
    return resp.body.decode(), resp


def _set_cookies(resp: Response) -> list[str]:
    return [v for k, v in resp.headers if k.lower() == "set-cookie"]


async def _count(port: int, n: int, extra: str = "") -> dict[str, int]:
    """n requests over two keep-alive connections; responses per colour."""
    counts = {"green": 0, "blue": 0}

    async def one_connection(k: int) -> None:
        r, w = await connect(port)
        for _ in range(k):
            color, _ = await _get(r, w, extra)
            counts[color] += 1
        w.close()

    await asyncio.gather(one_connection(n // 2), one_connection(n - n // 2))
    return counts


def test_weights_observed_and_cookie_set_for_the_pick() -> None:
    async def scenario() -> None:
        async with _colors() as (green, blue):
            routes = [backend(green, 20), backend(blue, 80)]
            async with proxy_with_route(routes) as (proxy, port):
                await _set(proxy, port, routes, COOKIE)
                counts = await _count(port, 2000)
                assert 300 <= counts["green"] <= 500, counts
                # Counters stay per colour.
                stats = proxy.stats_json()["dev/web"]["colors"]
                assert stats["green"]["requests"] == counts["green"]
                assert stats["blue"]["requests"] == counts["blue"]
                # A request without the cookie gets one naming the colour that answered.
                r, w = await connect(port)
                for _ in range(20):
                    color, resp = await _get(r, w)
                    assert _set_cookies(resp) == [f"cv={color}{ATTRIBUTES}"]
                w.close()

    run(scenario())


def test_cookie_keeps_a_client_on_its_colour_across_weight_changes() -> None:
    async def scenario() -> None:
        async with _colors() as (green, blue):
            split = [backend(green, 20), backend(blue, 80)]
            async with proxy_with_route(split) as (proxy, port):
                await _set(proxy, port, split, COOKIE)
                r, w = await connect(port)
                # A fresh client lands somewhere; find one that got the canary's cookie.
                for _ in range(200):
                    color, resp = await _get(r, w)
                    if color == "green":
                        break
                assert _set_cookies(resp) == [f"cv=green{ATTRIBUTES}"]
                canary, stable = "Cookie: a=1; cv=green\r\n", "Cookie: cv=blue\r\n"
                for weights in ((20, 80), (50, 50)):
                    routes = [backend(green, weights[0]), backend(blue, weights[1])]
                    await _set(proxy, port, routes, COOKIE)
                    for _ in range(50):
                        color, resp = await _get(r, w, canary)
                        assert (color, _set_cookies(resp)) == ("green", [])
                        color, resp = await _get(r, w, stable)
                        assert (color, _set_cookies(resp)) == ("blue", [])

                # 100/0: the route is no longer split. blue's cookie is ignored, nothing is set.
                await _set(proxy, port, [backend(green, 100), backend(blue, 0)], COOKIE)
                for extra in (stable, canary, ""):
                    for _ in range(10):
                        color, resp = await _get(r, w, extra)
                        assert (color, _set_cookies(resp)) == ("green", [])
                w.close()

    run(scenario())


def test_dead_colour_cookie_is_repicked_while_still_split() -> None:
    async def scenario() -> None:
        async with upstreams(
            ("green", _named("green")), ("blue", _named("blue")), ("red", _named("red"))
        ) as (green, blue, red):
            routes = [backend(green, 50), backend(red, 0), backend(blue, 50)]
            async with proxy_with_route(routes) as (proxy, port):
                await _set(proxy, port, routes, COOKIE)
                r, w = await connect(port)
                for _ in range(20):
                    color, resp = await _get(r, w, "Cookie: cv=red\r\n")
                    assert color in ("green", "blue")
                    assert _set_cookies(resp) == [f"cv={color}{ATTRIBUTES}"]
                w.close()
                assert not red.requests

    run(scenario())


def test_cookie_name_must_match_a_whole_pair() -> None:
    async def scenario() -> None:
        async with _colors() as (green, blue):
            routes = [backend(green, 1), backend(blue, 99)]
            async with proxy_with_route(routes) as (proxy, port):
                await _set(proxy, port, routes, COOKIE)
                r, w = await connect(port)
                # Neither is the cookie "cv": the request is picked (and told) anew.
                for extra in ("Cookie: xcv=green\r\n", "Cookie: cvx=green; a=cv=green\r\n"):
                    _, resp = await _get(r, w, extra)
                    assert len(_set_cookies(resp)) == 1
                # The pair may be in a second Cookie header.
                two = "Cookie: a=1\r\nCookie: b=2; cv=green\r\n"
                for _ in range(20):
                    color, resp = await _get(r, w, two)
                    assert (color, _set_cookies(resp)) == ("green", [])
                w.close()

    run(scenario())


def test_no_set_cookie_unless_split() -> None:
    async def scenario() -> None:
        async with _colors() as (green, blue), proxy_with_route([backend(blue)]) as (proxy, port):
            r, w = await connect(port)
            for routes, sticky in (
                ([backend(blue)], COOKIE),  # one backend, cookie configured
                ([backend(green, 10), backend(blue, 90)], None),  # split, no stickiness
                ([backend(green, 10), backend(blue, 90)], {"header": "X-User"}),
            ):
                await _set(proxy, port, routes, sticky)
                for _ in range(20):
                    _, resp = await _get(r, w)
                    assert _set_cookies(resp) == []
            w.close()

    run(scenario())


def test_refused_sticky_colour_falls_back_to_a_live_one() -> None:
    async def scenario() -> None:
        dead = await free_port()
        async with upstreams(("blue", _named("blue"))) as (blue,):
            routes = [
                {"color": "green", "host": LOCAL, "port": dead, "weight": 50},
                backend(blue, 50),
            ]
            async with proxy_with_route(routes) as (proxy, port):
                await _set(proxy, port, routes, COOKIE)
                r, w = await connect(port)
                for _ in range(5):
                    color, resp = await _get(r, w, "Cookie: cv=green\r\n")
                    # Availability wins; the client keeps its cookie for when green is back.
                    assert (color, _set_cookies(resp)) == ("blue", [])
                for _ in range(10):
                    color, resp = await _get(r, w)
                    assert (color, _set_cookies(resp)) == ("blue", [f"cv=blue{ATTRIBUTES}"])
                w.close()

    run(scenario())


def test_header_mode_is_deterministic_and_keeps_the_canary_growing() -> None:
    async def scenario() -> None:
        sticky = {"header": "X-User"}
        async with _colors() as (green, blue):
            at10 = [backend(green, 10), backend(blue, 90)]
            async with proxy_with_route(at10) as (proxy, port):
                await _set(proxy, port, at10, sticky)
                r, w = await connect(port)
                seen: dict[str, str] = {}
                for i in range(600):
                    color, resp = await _get(r, w, f"x-user: user-{i}\r\n")
                    assert _set_cookies(resp) == []
                    seen[f"user-{i}"] = color
                canary = [u for u, c in seen.items() if c == "green"]
                assert 25 <= len(canary) <= 100, len(canary)
                # The same value, the same colour, every time.
                for user in [*canary[:5], *[u for u, c in seen.items() if c == "blue"][:5]]:
                    for _ in range(10):
                        color, _ = await _get(r, w, f"X-User: {user}\r\n")
                        assert color == seen[user]

                await _set(proxy, port, [backend(green, 50), backend(blue, 50)], sticky)
                for user in canary:
                    color, _ = await _get(r, w, f"X-User: {user}\r\n")
                    assert color == "green"
                w.close()
                # Without the header: weighted random between both.
                counts = await _count(port, 200)
                assert counts["green"] > 0 and counts["blue"] > 0

    run(scenario())


def test_sticky_over_the_control_socket() -> None:
    async def scenario() -> None:
        home = Path(tempfile.mkdtemp(prefix="cv", dir="/tmp"))
        proxy = Proxy(asyncio.get_running_loop())
        control = ControlServer(proxy, home / "proxy.sock", lambda: None)
        await control.start()
        try:
            client = ProxyClient(home / "proxy.sock")
            async with _colors() as (green, blue):
                port = await free_port()
                split = [Backend("green", LOCAL, green.port, 20), Backend("blue", LOCAL, blue.port)]
                await client.set_route("dev/web", (LOCAL, port), split, sticky={"cookie": "cv"})
                route = (await client.ping())["routes"]["dev/web"]
                assert route["sticky"] == {"cookie": "cv"}
                for bad in (
                    {"cookie": "a b"},
                    {"cookie": "a;b"},
                    {"header": "X User"},
                    {"cookie": "cv", "header": "X-User"},
                    {"color": "green"},
                ):
                    with pytest.raises(RouterError, match="sticky"):
                        await client.set_route("dev/web", (LOCAL, port), split, sticky=bad)
                    assert (await client.ping())["routes"]["dev/web"] == route
                with pytest.raises(RouterError, match="sticky"):
                    await client.call(
                        {
                            "op": "set_route",
                            "name": "dev/web",
                            "listen": [LOCAL, port],
                            "backends": [b.to_json() for b in split],
                            "sticky": "cv",
                        }
                    )
                assert (await client.ping())["routes"]["dev/web"] == route
                r, w = await connect(port)
                _, resp = await _get(r, w, "Cookie: cv=green\r\n")
                assert resp.body == b"green"
                w.close()

                await client.set_route("dev/web", (LOCAL, port), split, sticky={"header": "X-U"})
                route = (await client.ping())["routes"]["dev/web"]
                assert route["sticky"] == {"header": "X-U"}
                await client.set_route("dev/web", (LOCAL, port), split)
                assert (await client.ping())["routes"]["dev/web"]["sticky"] is None
        finally:
            control.close()
            await proxy.drain(0.5)
            shutil.rmtree(home, ignore_errors=True)

    run(scenario())


def test_idle_keepalive_client_closed_after_timeout() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(
            req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            if req.target == "/slow":
                await release.wait()
            reply(writer, 200, b"ok")

        timeout = 0.3
        async with (
            upstreams(("blue", slow)) as (up,),
            proxy_with_route([backend(up)], {"keepalive_timeout": timeout}) as (proxy, port),
        ):
            loop = asyncio.get_running_loop()
            # A request in flight longer than the timeout: the connection is not idle.
            r, w = await connect(port)
            w.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            await wait_for(lambda: len(up.requests) == 1)
            started = loop.time()
            await wait_for(lambda: loop.time() - started > 3 * timeout)
            assert len(proxy.state.clients) == 1
            release.set()
            assert (await read_response(r)).body == b"ok"
            # Now idle: closed by the proxy after about the timeout.
            idle_from = loop.time()
            assert await asyncio.wait_for(r.read(), 5.0) == b""
            assert loop.time() - idle_from >= timeout - 0.01
            w.close()
            await wait_for(lambda: not proxy.state.clients)

            # A client that keeps sending requests more often than the timeout stays open.
            r, w = await connect(port)
            begin = loop.time()
            while loop.time() - begin < 3 * timeout:
                assert (await get(r, w)).status == 200
                await asyncio.sleep(timeout / 6)  # pacing the client, not waiting on an outcome
            assert (await get(r, w)).status == 200
            w.close()

    run(scenario())
