"""The data path, driven in-process over real sockets: forwarding, swaps, streaming, errors."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from test_proxy_support import (
    LOCAL,
    Request,
    backend,
    connect,
    echo_handler,
    free_port,
    get,
    proxy_with_route,
    read_response,
    reply,
    run,
    upstreams,
    wait_for,
)

from conveyor.proxy.server import BindError, Proxy


def _lines(body: bytes) -> list[str]:
    return body.decode().split("\n")


def test_forwarded_headers_added_and_hop_by_hop_removed() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", echo_handler)) as (up,),
            proxy_with_route([backend(up)]) as (_, port),
        ):
            r, w = await connect(port)
            resp = await get(
                r,
                w,
                "/path?q=1",
                "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
                "Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n"
                "TE: trailers\r\nTrailer: X-T\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n",
            )
            w.close()
            assert resp.status == 200
            lines = _lines(resp.body)
            assert lines[0] == "GET /path?q=1 0"
            headers = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines[1:])}
            assert headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
            assert headers["x-forwarded-proto"] == "http"
            assert headers["x-forwarded-host"] == "example.test"
            assert headers["host"] == "example.test"
            assert headers["x-kept"] == "yes"
            for hop in ("x-secret", "keep-alive", "te", "trailer", "proxy-connection", "upgrade"):
                assert hop not in headers
            assert "close" not in headers.get("connection", "")

    run(scenario())


def test_keepalive_connection_follows_route_swap() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _named("blue")), ("green", _named("green"))) as (blue, green),
            proxy_with_route([backend(blue)]) as (proxy, port),
        ):
            r, w = await connect(port)
            assert (await get(r, w)).body == b"blue"
            await proxy.set_route("dev/web", [LOCAL, port], [backend(green)], None)
            # Same client connection, next request: the new colour.
            assert (await get(r, w)).body == b"green"
            assert (await get(r, w)).body == b"green"
            w.close()
            assert blue.connections == 1
            # The idle pooled connection to blue (no longer routed) is closed by the proxy.
            await wait_for(lambda: not blue.writers)
            stats = proxy.stats_json()["dev/web"]["colors"]
            assert stats["blue"]["requests"] == 1
            assert stats["green"]["requests"] == 2
            assert stats["green"]["responses"]["2xx"] == 2

    run(scenario())


def test_weighted_backends_share_requests() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _named("blue")), ("green", _named("green"))) as (blue, green),
            proxy_with_route([backend(blue, 50), backend(green, 50)]) as (_, port),
        ):
            r, w = await connect(port)
            seen = {(await get(r, w)).body for _ in range(60)}
            w.close()
            assert seen == {b"blue", b"green"}

    run(scenario())


def test_pooled_connections_reused() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", echo_handler)) as (up,),
            proxy_with_route([backend(up)]) as (_, port),
        ):
            for _ in range(5):
                r, w = await connect(port)
                assert (await get(r, w)).status == 200
                w.close()
            assert up.connections == 1

    run(scenario())


def test_chunked_upload_streams_to_upstream() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _digest)) as (up,),
            proxy_with_route([backend(up)]) as (_, port),
        ):
            r, w = await connect(port)
            w.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            h = hashlib.sha256()
            for i in range(200):
                chunk = bytes([i % 256]) * (5000 + i)
                h.update(chunk)
                w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await w.drain()
            w.write(b"0\r\n\r\n")
            resp = await read_response(r)
            w.close()
            assert resp.status == 200
            assert resp.body.decode() == h.hexdigest()
            assert up.requests[0].header("Transfer-Encoding") == "chunked"

    run(scenario())


def test_content_length_upload_and_large_download() -> None:
    size = 8 * 1024 * 1024

    async def scenario() -> None:
        async with (
            upstreams(("blue", _big_handler(size))) as (up,),
            proxy_with_route([backend(up)]) as (_, port),
        ):
            r, w = await connect(port)
            body = b"x" * 300_000
            w.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
            w.write(body)
            resp = await read_response(r)
            assert resp.body == b"300000"
            for path in ("/cl", "/chunked"):
                resp = await get(r, w, path)
                assert resp.status == 200
                assert len(resp.body) == size
                assert resp.body == _pattern(size)
            assert (await get(r, w, "/chunked")).header("Transfer-Encoding") == "chunked"
            w.close()

    run(scenario())


def test_slow_client_backpressure_bounds_proxy_buffers() -> None:
    size = 64 * 1024 * 1024
    progress = [0]

    async def scenario() -> None:
        async with (
            upstreams(("blue", _big_handler(size, progress))) as (up,),
            proxy_with_route([backend(up)]) as (proxy, port),
        ):
            r, w = await connect(port)
            w.write(b"GET /cl HTTP/1.1\r\nHost: a\r\n\r\n")
            # The client reads nothing: the proxy must stop reading the upstream...
            await wait_for(lambda: _upstream_paused(proxy))
            client = next(iter(proxy.state.clients))
            assert client.transport.get_write_buffer_size() <= 1024 * 1024
            # ...so the upstream's writes block long before the whole body is out.
            assert progress[0] < size
            # Then the client reads slowly; the proxy's buffer stays bounded throughout.
            received = bytearray()
            head = await r.readuntil(b"\r\n\r\n")
            assert b"Content-Length: %d" % size in head
            largest = 0
            while len(received) < size:
                received += await r.read(256 * 1024)
                largest = max(largest, client.transport.get_write_buffer_size())
            w.close()
            assert largest <= 1024 * 1024
            assert hashlib.sha256(received).digest() == hashlib.sha256(_pattern(size)).digest()

    run(scenario(), timeout=60)


def test_upgrade_passthrough() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _websocket_echo)) as (up,),
            proxy_with_route([backend(up)]) as (proxy, port),
        ):
            r, w = await connect(port)
            w.write(
                b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"Upgrade: websocket" in head
            for i in range(20):
                msg = b"frame-%d " % i * 1000
                w.write(msg)
                assert await r.readexactly(len(msg)) == msg
            assert up.requests[0].header("Upgrade") == "websocket"
            w.close()
            stats = proxy.stats_json()["dev/web"]["colors"]["blue"]
            assert stats["responses"]["1xx"] == 1
            await wait_for(lambda: not up.writers)

    run(scenario())


def test_upgrade_header_dropped_when_not_upgrading() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", echo_handler)) as (up,),
            proxy_with_route([backend(up)]) as (_, port),
        ):
            r, w = await connect(port)
            resp = await get(r, w, "/", "Upgrade: websocket\r\n")
            w.close()
            assert resp.status == 200
            assert up.requests[0].header("Upgrade") is None

    run(scenario())


def test_502_when_upstream_unreachable_and_counted() -> None:
    async def scenario() -> None:
        dead = await free_port()
        target = {"color": "blue", "host": LOCAL, "port": dead, "weight": 100}
        async with proxy_with_route([target], {"retries": 1}) as (proxy, port):
            r, w = await connect(port)
            resp = await get(r, w)
            assert resp.status == 502
            # The request was complete: the client connection stays usable.
            assert (await get(r, w)).status == 502
            w.close()
            stats = proxy.stats_json()["dev/web"]["colors"]["blue"]
            assert stats["requests"] == 2
            assert stats["responses"]["5xx"] == 2
            assert stats["upstream_errors"] == 2
            assert stats["inflight"] == 0

    run(scenario())


def test_504_when_upstream_does_not_answer() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def silent(
            req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> bool:
            await release.wait()
            return True

        async with (
            upstreams(("blue", silent)) as (up,),
            proxy_with_route([backend(up)], {"upstream_timeout": 0.3}) as (proxy, port),
        ):
            r, w = await connect(port)
            assert (await get(r, w)).status == 504
            assert (await get(r, w)).status == 504
            release.set()
            w.close()
            stats = proxy.stats_json()["dev/web"]["colors"]["blue"]
            assert stats["upstream_errors"] == 2
            assert stats["inflight"] == 0

    run(scenario())


def test_retry_on_refused_until_route_swapped_to_live_backend() -> None:
    async def scenario() -> None:
        dead = await free_port()
        target = {"color": "blue", "host": LOCAL, "port": dead, "weight": 100}
        async with (
            upstreams(("green", _named("green"))) as (green,),
            proxy_with_route([target], {"retries": 8}) as (proxy, port),
        ):
            r, w = await connect(port)
            w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            blue = proxy.stats["dev/web"]["blue"]
            await wait_for(lambda: blue.inflight == 1)
            await proxy.set_route("dev/web", [LOCAL, port], [backend(green)], {"retries": 8})
            resp = await read_response(r)
            w.close()
            assert resp.status == 200
            assert resp.body == b"green"
            stats = proxy.stats_json()["dev/web"]["colors"]
            assert stats["blue"]["inflight"] == 0
            assert stats["green"]["responses"]["2xx"] == 1
            assert stats["blue"]["upstream_errors"] == 0

    run(scenario())


def test_refused_backend_retried_on_other_backend() -> None:
    async def scenario() -> None:
        dead = await free_port()
        target = {"color": "blue", "host": LOCAL, "port": dead, "weight": 50}
        async with (
            upstreams(("green", _named("green"))) as (green,),
            proxy_with_route([target, backend(green, 50)], {"retries": 0}) as (proxy, port),
        ):
            for _ in range(20):
                r, w = await connect(port)
                w.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
                resp = await read_response(r)
                w.close()
                assert resp.body == b"green"
            stats = proxy.stats_json()["dev/web"]["colors"]
            assert stats["green"]["requests"] == 20
            assert stats["blue"]["requests"] == 0

    run(scenario())


def test_dead_pooled_connection_retried_for_idempotent_methods_only() -> None:
    async def scenario() -> None:
        served: set[asyncio.StreamWriter] = set()

        async def one_per_connection(
            req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> bool:
            # Each connection answers one request with keep-alive, then drops the connection
            # when the next request arrives, without a byte of answer: what a backend closing
            # an idle keep-alive connection looks like to the proxy.
            if writer in served:
                return True
            served.add(writer)
            reply(writer, 200, req.method.encode())
            return False

        async with (
            upstreams(("blue", one_per_connection)) as (up,),
            proxy_with_route([backend(up)]) as (proxy, port),
        ):
            r, w = await connect(port)
            assert (await get(r, w, "/a")).body == b"GET"
            # Sent on the pooled connection, which dies: replayed on a fresh one.
            assert (await get(r, w, "/b")).body == b"GET"
            w.write(b"DELETE /c HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_response(r)).body == b"DELETE"
            assert up.connections == 3
            # POST is not idempotent: not replayed.
            w.write(b"POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
            assert (await read_response(r)).status == 502
            w.close()
            assert up.connections == 3
            stats = proxy.stats_json()["dev/web"]["colors"]["blue"]
            assert stats["responses"]["2xx"] == 3
            assert stats["upstream_errors"] == 1

    run(scenario())


def test_head_and_http10_and_pipelining() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _head_aware)) as (up,),
            proxy_with_route([backend(up)]) as (_, port),
        ):
            r, w = await connect(port)
            w.write(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
            resp = await read_response(r, "HEAD")
            assert resp.status == 200
            assert resp.header("Content-Length") == "5"
            # Still in sync after the HEAD: pipelined GETs answered in order.
            w.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_response(r)).body == b"/1..."
            assert (await read_response(r)).body == b"/2..."
            w.close()

            r, w = await connect(port)
            w.write(b"GET /10 HTTP/1.0\r\n\r\n")
            resp = await read_response(r)
            assert resp.body == b"/10..."
            assert await r.read() == b""  # HTTP/1.0 without keep-alive: closed
            w.close()

    run(scenario())


def test_bind_failure_leaves_table_untouched() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _named("blue")), ("green", _named("green"))) as (blue, green),
            proxy_with_route([backend(blue)]) as (proxy, port),
        ):
            before = proxy.routes_json()
            with pytest.raises(BindError, match=rf"cannot listen on 127\.0\.0\.1:{green.port}"):
                await proxy.set_route("dev/web", [LOCAL, green.port], [backend(green)], None)
            assert proxy.routes_json() == before
            r, w = await connect(port)
            assert (await get(r, w)).body == b"blue"
            w.close()

            # A changed, free address rebinds: the new port serves, the old one is closed.
            new_port = await free_port()
            await proxy.set_route("dev/web", [LOCAL, new_port], [backend(green)], None)
            r, w = await connect(new_port)
            assert (await get(r, w)).body == b"green"
            w.close()
            with pytest.raises(OSError):
                await connect(port)

    run(scenario())


def test_remove_route_closes_listener() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _named("blue"))) as (blue,),
            proxy_with_route([backend(blue)]) as (proxy, port),
        ):
            await proxy.remove_route("dev/web")
            assert proxy.routes_json() == {}
            with pytest.raises(OSError):
                await connect(port)

    run(scenario())


def test_no_live_backend_is_503() -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", _named("blue"))) as (blue,),
            proxy_with_route([backend(blue, 0)]) as (_, port),
        ):
            r, w = await connect(port)
            assert (await get(r, w)).status == 503
            w.close()
            assert blue.connections == 0

    run(scenario())


def test_drain_lets_inflight_request_finish() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(
            req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await release.wait()
            reply(writer, 200, b"done")

        async with upstreams(("blue", slow)) as (up,):
            proxy = Proxy(asyncio.get_running_loop())
            port = await free_port()
            await proxy.set_route("dev/web", [LOCAL, port], [backend(up)], None)
            r, w = await connect(port)
            w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            await wait_for(lambda: len(up.requests) == 1)
            drain = asyncio.create_task(proxy.drain(5.0))
            await wait_for(lambda: proxy.state.closing)
            with pytest.raises(OSError):
                await connect(port)  # no longer accepting
            release.set()
            resp = await read_response(r)
            assert resp.status == 200
            assert resp.body == b"done"
            assert resp.header("Connection") == "close"
            await drain
            w.close()

    run(scenario())


# -- upstream behaviours ---------------------------------------------------------------------


def _named(name: str):  # type: ignore[no-untyped-def]
    async def handler(
        req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        reply(writer, 200, name.encode())

    return handler


async def _digest(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    reply(writer, 200, hashlib.sha256(req.body).hexdigest().encode())


async def _head_aware(
    req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool | None:
    body = (req.target + "...").encode()
    if req.method == "HEAD":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    elif req.version == "HTTP/1.0":
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + body)
        return True
    else:
        reply(writer, 200, body)
    return None


def _pattern(size: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


def _big_handler(size: int, progress: list[int] | None = None):  # type: ignore[no-untyped-def]
    data = _pattern(size)

    async def handler(
        req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if req.method == "POST":
            reply(writer, 200, str(len(req.body)).encode())
            return
        step = 256 * 1024
        if req.target == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, size, step):
                piece = data[i : i + step]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for i in range(0, size, step):
            writer.write(data[i : i + step])
            await writer.drain()
            if progress is not None:
                progress[0] = i + step

    return handler


async def _websocket_echo(
    req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    return True


def _upstream_paused(proxy: Proxy) -> bool:
    for client in proxy.state.clients:
        ex = client.queue[0] if client.queue else None
        if ex is not None and ex.upstream is not None and ex.upstream.reading_paused:
            return True
    return False


def test_interim_response_passed_on_and_not_mixed_into_final() -> None:
    # The response parser's per-message state is reset by the exchange and after an interim
    # head (there is no on_message_begin callback): nothing of the 103 leaks into the 200.
    async def early_hints(
        req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 201 Made\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok"
        )

    async def scenario() -> None:
        async with (
            upstreams(("blue", early_hints)) as (up,),
            proxy_with_route([backend(up)]) as (_, port),
        ):
            r, w = await connect(port)
            for _ in range(2):  # twice: the second exchange reuses the pooled connection
                w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                interim = await r.readuntil(b"\r\n\r\n")
                assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\n")
                assert b"Link: </s.css>; rel=preload\r\n" in interim
                final = await read_response(r)
                assert final.status == 201
                assert final.header("X-Final") == "yes"
                assert final.header("Link") is None
                assert final.body == b"ok"
            assert up.connections == 1
            w.close()

    run(scenario())
