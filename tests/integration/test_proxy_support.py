"""Helpers for the proxy tests: tiny real upstream servers and a raw HTTP client.

No tests here; the test_proxy_* modules import it (pytest puts this directory on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from conveyor.proxy.server import Proxy
from conveyor.routers.builtin import ProxyClient
from conveyor.runtimes.local import free_port as runtime_free_port

LOCAL = "127.0.0.1"


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    """Run a test coroutine on uvloop (the proxy's production loop), bounded in time."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return uvloop.run(bounded())


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `predicate` until true; fail after `timeout`. Never a fixed sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
    return lines[0], headers


async def _read_body(
    reader: asyncio.StreamReader, headers: list[tuple[str, str]], until_close: bool
) -> bytes:
    te = [v for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == "content-length"]
    if te and te[-1].lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if cl:
        return await reader.readexactly(int(cl[0]))
    if until_close:
        return await reader.read()
    return b""


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    head = await _read_head(reader)
    if head is None:
        return None
    line, headers = head
    method, target, version = line.split(" ", 2)
    return Request(method, target, version, headers, await _read_body(reader, headers, False))


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    head = await _read_head(reader)
    if head is None:
        raise ConnectionError("connection closed before a response")
    line, headers = head
    status = int(line.split(" ", 2)[1])
    if method == "HEAD" or status in (204, 304) or status < 200:
        return Response(status, headers, b"")
    return Response(status, headers, await _read_body(reader, headers, True))


Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool | None]]


def reply(
    writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    writer.write(head.encode() + b"\r\n" + body)


async def echo_handler(
    req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answers with the request's body length and the forwarded headers as text."""
    lines = [f"{req.method} {req.target} {len(req.body)}"]
    lines += [f"{k}: {v}" for k, v in req.headers]
    reply(writer, 200, ("\n".join(lines)).encode())


@dataclass
class Upstream:
    """A tiny keep-alive HTTP/1.1 server; records every byte and connection it gets."""

    name: str
    handler: Handler = echo_handler
    port: int = 0
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, LOCAL, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.transport.abort()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        recording = _Recording(reader, self.raw)
        try:
            while True:
                req = await read_request(recording)  # type: ignore[arg-type]
                if req is None:
                    break
                self.requests.append(req)
                if await self.handler(req, reader, writer):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


class _Recording:
    """A StreamReader wrapper that copies what it reads into `raw`."""

    def __init__(self, reader: asyncio.StreamReader, raw: bytearray) -> None:
        self.reader = reader
        self.raw = raw

    async def readuntil(self, sep: bytes) -> bytes:
        data = await self.reader.readuntil(sep)
        self.raw += data
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self.reader.readexactly(n)
        self.raw += data
        return data

    async def read(self, n: int = -1) -> bytes:
        data = await self.reader.read(n)
        self.raw += data
        return data


@contextlib.asynccontextmanager
async def upstreams(*handlers: tuple[str, Handler]) -> AsyncIterator[list[Upstream]]:
    ups = [await Upstream(name, handler).start() for name, handler in handlers]
    try:
        yield ups
    finally:
        for u in ups:
            await u.stop()


def backend(up: Upstream, weight: int = 100, color: str | None = None) -> dict[str, Any]:
    return {"color": color or up.name, "host": LOCAL, "port": up.port, "weight": weight}


@contextlib.asynccontextmanager
async def proxy_with_route(
    backends: list[dict[str, Any]], limits: dict[str, Any] | None = None, name: str = "dev/web"
) -> AsyncIterator[tuple[Proxy, int]]:
    """An in-process proxy with one route on a free port; yields (proxy, port)."""
    proxy = Proxy(asyncio.get_running_loop())
    port = await free_port()
    await proxy.set_route(name, [LOCAL, port], backends, limits)
    try:
        yield proxy, port
    finally:
        await proxy.drain(0.5)


async def free_port() -> int:
    # Outside the ephemeral range: no outgoing connection can take it before the test binds it.
    return runtime_free_port(LOCAL)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOCAL, port, limit=1 << 20)


async def get(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: str = "/",
    extra: str = "",
) -> Response:
    writer.write(f"GET {target} HTTP/1.1\r\nHost: example.test\r\n{extra}\r\n".encode())
    return await read_response(reader)


async def raw_exchange(port: int, data: bytes) -> tuple[Response, bool]:
    """Send raw bytes, read one response; also report whether the proxy then closed."""
    reader, writer = await connect(port)
    try:
        writer.write(data)
        resp = await read_response(reader)
        closed = await reader.read() == b""
        return resp, closed
    finally:
        writer.close()


@dataclass
class Running:
    """A proxy process started by `start_proxy` for a test: its files and its (first) pid."""

    home: Path
    control: Path
    pidfile: Path
    log: Path
    pid: int

    @property
    def client(self) -> ProxyClient:
        return ProxyClient(self.control)


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process `pid` ended within `timeout` (reaped when it is our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # Not our child (new session, started via Popen in start_proxy): reap if it is.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    return False


def named(name: str) -> Callable[[Request, Any, asyncio.StreamWriter], Awaitable[None]]:
    """An upstream handler answering 200 with its own name."""

    async def handler(req: Request, reader: Any, writer: asyncio.StreamWriter) -> None:
        reply(writer, 200, name.encode())

    return handler
