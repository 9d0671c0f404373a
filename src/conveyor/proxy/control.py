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
from typing import Any

from conveyor.proxy.model import ConfigurationError
from conveyor.proxy.server import BindError, Proxy

MAX_LINE = 4 * 1024 * 1024


def log(message: str) -> None:
    print(f"conveyor-proxy[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class ControlServer:
    def __init__(self, proxy: Proxy, path: Path, on_shutdown: Callable[[], None]) -> None:
        self.proxy = proxy
        self.path = path
        self.on_shutdown = on_shutdown
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = str(self.path)
        if self.path.exists():
            if _answers(path):
                raise RuntimeError(f"another proxy already listens on {path}")
            self.path.unlink()
        # The umask makes the socket 0600 from the moment it exists (no chmod race).
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path, limit=MAX_LINE)
        finally:
            os.umask(old)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
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
                return {"ok": True, "routes": proxy.stats_json()}, False
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
