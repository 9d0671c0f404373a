"""The control socket: newline-delimited JSON requests, one response line each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from conveyor.proxy.model import ConfigurationError
from conveyor.proxy.server import BindError

MAX_LINE = 4 * 1024 * 1024


class Target(Protocol):
    """What the control socket drives: the one-process `Proxy`, or the keeper of workers."""

    started_at: float
    version: str

    def routes_json(self) -> dict[str, Any]: ...

    async def set_route(
        self,
        name: str,
        listen: object,
        backends: object,
        limits: object,
        sticky: object = None,
        fallback: object = None,
    ) -> None: ...

    async def remove_route(self, name: str) -> None: ...

    async def counters(self) -> dict[str, Any]: ...

    async def status(self) -> dict[str, Any]: ...


def log(message: str) -> None:
    print(f"conveyor-proxy[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class ControlServer:
    def __init__(self, proxy: Target, path: Path, on_shutdown: Callable[[], None]) -> None:
        self.proxy = proxy
        self.path = path
        self.on_shutdown = on_shutdown
        self.server: asyncio.AbstractServer | None = None
        self.inode = 0
        self._bound = str(path)

    async def start(self, takeover: bool = False) -> None:
        """Listen on `path`. With `takeover` (a reload) another proxy still answers there: bind
        beside it and rename over it, so that a client finds one or the other, never nothing."""
        path = str(self.path)
        bind = path
        if takeover:
            bind = f"{path}.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(bind)
        elif self.path.exists():
            if _answers(path):
                raise RuntimeError(f"another proxy already listens on {path}")
            self.path.unlink()
        # The umask makes the socket 0600 from the moment it exists (no chmod race).
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, bind, limit=MAX_LINE)
        finally:
            os.umask(old)
        self.inode = os.stat(bind).st_ino
        self._bound = bind

    def publish(self) -> None:
        """A takeover's socket replaces the old proxy's at `path` (one atomic rename)."""
        if self._bound != str(self.path):
            os.rename(self._bound, self.path)
            self._bound = str(self.path)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        # Only our own socket file: after a reload the path holds the successor's.
        with contextlib.suppress(OSError):
            if os.stat(self._bound).st_ino == self.inode:
                os.unlink(self._bound)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line.startswith(b'{"op": "handover"') or line.startswith(b'{"op":"handover"'):
                    # The connection becomes the reload's channel (keeper.py): not JSON lines.
                    await self.handover(reader, writer)
                    return
                response, shutdown = await self.handle(line)
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
                if shutdown:
                    self.on_shutdown()
                    break
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log(f"control connection error: {exc}")
        finally:
            writer.close()

    async def handover(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"ok": false, "error": "this proxy cannot hand over its sockets"}\n')
        await writer.drain()

    async def handle(self, line: bytes) -> tuple[dict[str, Any], bool]:
        try:
            request = json.loads(line)
        except ValueError as exc:
            log(f"control: invalid JSON: {exc}")
            return {"ok": False, "error": f"invalid JSON: {exc}"}, False
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object"}, False
        op = request.get("op")
        proxy = self.proxy
        try:
            if op == "ping":
                return {
                    "ok": True,
                    "pid": os.getpid(),
                    "started_at": proxy.started_at,
                    "version": proxy.version,
                    "routes": proxy.routes_json(),
                }, False
            if op == "set_route":
                await proxy.set_route(
                    request.get("name"),  # type: ignore[arg-type]
                    request.get("listen"),
                    request.get("backends"),
                    request.get("limits"),
                    request.get("sticky"),
                    request.get("fallback"),
                )
                return {"ok": True}, False
            if op == "remove_route":
                name = request.get("name")
                if not isinstance(name, str):
                    return {"ok": False, "error": "name must be a string"}, False
                await proxy.remove_route(name)
                return {"ok": True}, False
            if op == "stats":
                return {"ok": True, "routes": await proxy.counters()}, False
            if op == "status":
                return {"ok": True, **(await proxy.status())}, False
            if op == "shutdown":
                return {"ok": True}, True
        except (ConfigurationError, BindError) as exc:
            log(f"control: {op}: {exc}")
            return {"ok": False, "error": str(exc)}, False
        return {"ok": False, "error": f"unknown op {op!r}"}, False


def _answers(path: str) -> bool:
    """Whether something accepts connections on the unix socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
        return True
