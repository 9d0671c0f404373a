"""probe_http / probe_tcp against real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from conveyor.health import probe_http, probe_tcp
from conveyor.runtimes import free_port

Responder = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serve(respond: Responder) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await respond(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def answering(raw: bytes, seen: list[bytes] | None = None) -> Responder:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head)
        writer.write(raw)
        await writer.drain()

    return respond


def test_2xx_passes_and_request_is_well_formed() -> None:
    async def scenario() -> None:
        seen: list[bytes] = []
        ok_response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        async with serve(answering(ok_response, seen)) as port:
            assert await probe_http("127.0.0.1", port, "/healthz?deep=1", 2.0) == (True, "HTTP 200")
        lines = seen[0].decode().split("\r\n")
        assert lines[0] == "GET /healthz?deep=1 HTTP/1.1"
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        assert headers["Host"] == f"127.0.0.1:{port}"
        assert headers["Connection"] == "close"
        assert headers["User-Agent"] == "conveyor-health"

        async with serve(answering(b"HTTP/1.1 204 No Content\r\n\r\n")) as port:
            assert await probe_http("127.0.0.1", port, "/", 2.0) == (True, "HTTP 204")

    asyncio.run(scenario())


def test_non_2xx_fails_with_status() -> None:
    async def scenario() -> None:
        for status in (503, 301, 404, 500):
            raw = f"HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n".encode()
            async with serve(answering(raw)) as port:
                assert await probe_http("127.0.0.1", port, "/", 2.0) == (False, f"HTTP {status}")

    asyncio.run(scenario())


def test_connection_refused() -> None:
    port = free_port()
    assert asyncio.run(probe_http("127.0.0.1", port, "/healthz", 2.0)) == (
        False,
        "connection refused",
    )
    assert asyncio.run(probe_tcp("127.0.0.1", port, 2.0)) == (False, "connection refused")


def test_timeout_when_the_server_never_answers() -> None:
    # A listening socket nobody accepts from: the kernel completes the handshake, then silence.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        result = asyncio.run(probe_http("127.0.0.1", port, "/healthz", 0.3))
        elapsed = time.monotonic() - started
        assert result == (False, "timed out after 0.3s")
        # Bounded, not fast: without the timeout the probe would wait forever.
        assert 0.3 <= elapsed < 30
        # TCP-level the port is fine.
        assert asyncio.run(probe_tcp("127.0.0.1", port, 1.0)) == (True, "connected")


def test_timeout_detail_uses_whole_seconds_when_whole() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def scenario() -> tuple[bool, str]:
        async with serve(never) as port:
            return await probe_http("127.0.0.1", port, "/", 1.0)

    assert asyncio.run(scenario()) == (False, "timed out after 1s")


def test_invalid_and_missing_responses() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async def scenario() -> None:
        for raw in (b"garbage\r\n\r\n", b"HTTP/1.1 2000 Odd\r\n\r\n", b"SSH-2.0-OpenSSH\r\n"):
            async with serve(answering(raw)) as port:
                assert await probe_http("127.0.0.1", port, "/", 2.0) == (False, "invalid response")
        async with serve(answering(b"HTTP/1.1 200 " + b"x" * 200_000 + b"\r\n\r\n")) as port:
            assert await probe_http("127.0.0.1", port, "/", 2.0) == (False, "invalid response")
        async with serve(close_at_once) as port:
            assert await probe_http("127.0.0.1", port, "/", 2.0) == (
                False,
                "connection closed without a response",
            )

    asyncio.run(scenario())


def test_endless_headers_do_not_hang_the_probe() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        # More header bytes than a probe will ever read, never a blank line.
        for i in range(10_000):
            writer.write(f"X-Filler-{i}: yes\r\n".encode())
        await writer.drain()
        await asyncio.sleep(30)

    async def scenario() -> tuple[bool, str]:
        async with serve(endless) as port:
            return await probe_http("127.0.0.1", port, "/", 2.0)

    assert asyncio.run(scenario()) == (True, "HTTP 200")
