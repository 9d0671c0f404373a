"""Slowloris protection: a request head must arrive whole within `header_timeout`.

A client that starts a head and never finishes it (or trickles it byte by byte) gets
`408 Request Timeout` + close; a new connection that sends nothing is closed without a word.
Neither reaches the upstream. An idle keep-alive connection between requests and a slow request
*body* are not concerned (keepalive_timeout and back-pressure deal with those).
"""

from __future__ import annotations

import asyncio

from test_proxy_support import (
    Request,
    backend,
    connect,
    get,
    proxy_with_route,
    read_response,
    reply,
    run,
    upstreams,
    wait_for,
)

TIMEOUT = 0.3
# Long enough that only header_timeout can be what closes a connection in these tests.
LIMITS = {"header_timeout": TIMEOUT, "keepalive_timeout": 60.0}


async def _ok(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    reply(writer, 200, b"ok:" + req.body)


def test_unfinished_head_gets_408_and_close() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _ok)) as (up,),
            proxy_with_route([backend(up)], LIMITS) as (proxy, port),
        ):
            loop = asyncio.get_running_loop()
            r, w = await connect(port)
            started = loop.time()
            w.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            resp = await asyncio.wait_for(read_response(r), 5.0)
            assert resp.status == 408
            assert resp.header("Connection") == "close"
            assert await asyncio.wait_for(r.read(), 5.0) == b""
            assert loop.time() - started >= TIMEOUT - 0.01
            assert up.connections == 0
            w.close()
            await wait_for(lambda: not proxy.state.clients)

    run(scenario())


def test_trickled_head_times_out_despite_activity() -> None:
    # The classic slowloris: every byte resets nothing, the head as a whole must be on time.
    async def scenario() -> None:
        async with (
            upstreams(("blue", _ok)) as (up,),
            proxy_with_route([backend(up)], LIMITS) as (_, port),
        ):
            loop = asyncio.get_running_loop()
            r, w = await connect(port)
            started = loop.time()
            head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 1000
            answer = asyncio.ensure_future(r.read())
            for i in range(len(head)):
                if answer.done():
                    break
                w.write(head[i : i + 1])
                await asyncio.sleep(TIMEOUT / 10)  # pacing the client, not waiting on an outcome
            data = await asyncio.wait_for(answer, 5.0)
            assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
            # Closed long before the trickled head could be complete (1000 bytes at one per
            # TIMEOUT / 10: 30s). How soon after TIMEOUT is for a loaded machine to say.
            assert loop.time() - started < 10.0
            assert up.connections == 0
            w.close()

    run(scenario())


def test_silent_new_connection_closed_without_response() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _ok)) as (up,),
            proxy_with_route([backend(up)], LIMITS) as (proxy, port),
        ):
            loop = asyncio.get_running_loop()
            r, w = await connect(port)
            started = loop.time()
            assert await asyncio.wait_for(r.read(), 5.0) == b""
            assert loop.time() - started >= TIMEOUT - 0.01
            assert up.connections == 0
            w.close()
            await wait_for(lambda: not proxy.state.clients)

    run(scenario())


def test_idle_keepalive_and_slow_body_are_not_head_timeouts() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _ok)) as (up,),
            proxy_with_route([backend(up)], LIMITS) as (proxy, port),
        ):
            loop = asyncio.get_running_loop()
            r, w = await connect(port)
            assert (await get(r, w)).status == 200
            # Idle between requests for several header timeouts: still open.
            idle_from = loop.time()
            await wait_for(lambda: loop.time() - idle_from > 4 * TIMEOUT)
            assert len(proxy.state.clients) == 1
            assert (await get(r, w)).status == 200
            # A head sent whole, then a body that takes longer than header_timeout.
            w.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
            body_from = loop.time()
            await wait_for(lambda: loop.time() - body_from > 4 * TIMEOUT)
            assert len(proxy.state.clients) == 1
            w.write(b"cd")
            resp = await read_response(r)
            assert (resp.status, resp.body) == (200, b"ok:abcd")
            assert up.requests[-1].target == "/up"
            w.close()

    run(scenario())
