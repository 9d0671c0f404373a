"""The built-in proxy as a `Router`, the client of its control socket, and starting its process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor import __version__
from conveyor.routers.base import (
    Backend,
    ColorCounters,
    ProxyUnavailable,
    RouterError,
    Split,
)
from conveyor.routers.kinds import ROUTER_FEATURES

if TYPE_CHECKING:
    from conveyor.config import ResolvedEnvironment

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0
START_TIMEOUT = 10.0


class BuiltinRouter:
    """`Router` for conveyor's own proxy: a process of its own, driven over a unix socket.

    The proxy outlives the agent; `ensure` adopts a running one or starts a new one (which then
    has no routes: the caller applies them again). `options` of a split are the proxy's limits.
    """

    name = "builtin"
    features = ROUTER_FEATURES["builtin"]

    def __init__(
        self,
        home: Path,
        control: Path,
        pidfile: Path,
        log: Path,
        workers: Callable[[], int | str] = lambda: "auto",
    ) -> None:
        self.home = home
        self.pidfile = pidfile
        self.log = log
        self.client = ProxyClient(control)
        self.workers = workers  # `[proxy] workers`, read when a proxy is started
        # Set when ensure() found a proxy of another conveyor version and reloaded it.
        self.reload_note: str | None = None
        self._version_checked: set[object] = set()  # proxy pids whose version was acted on

    def options(self, env: ResolvedEnvironment) -> Mapping[str, Any]:
        # The proxy's limits ([proxy] in conveyor.toml, per environment) travel with each route.
        return env.proxy.model_dump()

    async def ensure(self) -> bool:
        """Adopt the running proxy (True: one had to be started, without routes).

        A proxy of another conveyor version (the agent was upgraded with `agent stop
        --keep-running`) is reloaded at once: the conveyor installed now takes its sockets and
        routes over, without refusing or dropping a connection (docs/proxy.md, "Reload").
        """
        try:
            ping = await self.client.ping()
        except ProxyUnavailable:
            # start_proxy waits (bounded) for the new process to answer: keep the loop free.
            await asyncio.to_thread(
                start_proxy,
                self.home,
                self.client.path,
                self.pidfile,
                self.log,
                workers=self.workers(),
            )
            return True
        running = ping.get("version")
        # Once per proxy process: ensure() also runs on every supervision pass, and a proxy that
        # could not be reloaded is not tried again every few seconds.
        if running != __version__ and ping.get("pid") not in self._version_checked:
            self._version_checked.add(ping.get("pid"))
            try:
                old, new = await asyncio.to_thread(
                    reload_proxy,
                    self.home,
                    self.client.path,
                    self.pidfile,
                    self.log,
                    workers=self.workers(),
                )
            except (ProxyUnavailable, RouterError, OSError) as exc:
                # A proxy too old to hand its sockets over: it goes on serving, adopted.
                self.reload_note = (
                    f"the proxy (pid {ping.get('pid')}) runs conveyor {running or '(unknown)'} and "
                    f"could not be reloaded ({exc}): it goes on serving; `conveyor agent stop` "
                    "and a command that starts the agent replace it"
                )
            else:
                self.reload_note = (
                    f"the proxy (pid {old}) ran conveyor {running or '(unknown)'}: reloaded it "
                    f"with conveyor {__version__} (pid {new}), its sockets handed over, no "
                    "connection closed"
                )
            log.warning("%s", self.reload_note)
        return False

    async def apply(self, split: Split) -> None:
        await self.client.set_route(
            split.route,
            (split.host, split.port),
            split.backends,
            split.options,
            split.sticky,
            split.fallback,
        )

    async def remove(self, route: str) -> None:
        await self.client.remove_route(route)

    async def colors(self, route: str) -> dict[str, Any] | None:
        stats = await self.client.stats()
        found = stats.get("routes", {}).get(route)
        return None if found is None else dict(found.get("colors", {}))

    async def inflight(self, route: str, color: str) -> int | None:
        colors = await self.colors(route)
        return int((colors or {}).get(color, {}).get("inflight", 0))

    async def counters(self, route: str) -> Mapping[str, ColorCounters] | None:
        return await self.colors(route)  # None: no such route

    async def shutdown(self) -> None:
        await self.client.shutdown()


class ProxyClient:
    """The proxy's unix control socket: one short connection per call."""

    def __init__(self, path: Path, timeout: float = CALL_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    async def call(self, request: Mapping[str, Any]) -> dict[str, Any]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path), limit=16 * 1024 * 1024),
                self.timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise ProxyUnavailable(
                f"proxy control socket {self.path}: {exc or 'timed out'}"
            ) from exc
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            line = await asyncio.wait_for(reader.readline(), self.timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ProxyUnavailable(
                f"proxy control socket {self.path}: {exc or 'timed out'}"
            ) from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return _decode(line, self.path)

    async def ping(self) -> dict[str, Any]:
        return await self.call({"op": "ping"})

    async def set_route(
        self,
        name: str,
        listen: tuple[str, int],
        backends: Sequence[Backend],
        limits: Mapping[str, Any] | None = None,
        sticky: Mapping[str, str] | None = None,
        fallback: Sequence[Backend] = (),
    ) -> None:
        request: dict[str, Any] = {
            "op": "set_route",
            "name": name,
            "listen": [listen[0], listen[1]],
            "backends": [b.to_json() for b in backends],
        }
        if limits is not None:
            request["limits"] = dict(limits)
        if sticky is not None:
            # {"cookie": name} or {"header": name}; omitted means no stickiness.
            request["sticky"] = dict(sticky)
        if fallback:
            # The standby color: no traffic, but the one retry of a request that failed
            # unanswered (docs/proxy.md, "Retries"). Omitted means none.
            request["fallback"] = [b.to_json() for b in fallback]
        await self.call(request)

    async def remove_route(self, name: str) -> None:
        await self.call({"op": "remove_route", "name": name})

    async def stats(self) -> dict[str, Any]:
        return await self.call({"op": "stats"})

    async def shutdown(self) -> None:
        await self.call({"op": "shutdown"})


def configured_workers(project_dir: Path | None) -> int | str:
    """`[proxy] workers` of the project's conveyor.toml ("auto" when it cannot be read: every
    command reports that anyway)."""
    if project_dir is None:
        return "auto"
    from conveyor.config import ConfigError, load_config

    try:
        return load_config(project_dir / "conveyor.toml").proxy.workers
    except (ConfigError, OSError):
        return "auto"


def _decode(line: bytes, path: Path) -> dict[str, Any]:
    if not line:
        raise ProxyUnavailable(f"proxy control socket {path}: closed without answering")
    try:
        response = json.loads(line)
    except ValueError as exc:
        raise ProxyUnavailable(f"proxy control socket {path}: garbled answer") from exc
    if not isinstance(response, dict):
        raise ProxyUnavailable(f"proxy control socket {path}: garbled answer")
    if not response.get("ok"):
        raise RouterError(str(response.get("error", "unknown error")))
    return response


def ping_sync(path: Path, timeout: float = 1.0) -> dict[str, Any]:
    """Blocking ping, for callers outside an event loop (start_proxy, the CLI)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(b'{"op":"ping"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            raise ProxyUnavailable(f"proxy control socket {path}: {exc}") from exc
    return _decode(buf, path)


def read_pid(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that process exists, else None."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def start_proxy(
    home: Path,
    control: Path,
    pidfile: Path,
    log: Path,
    python: str = sys.executable,
    workers: int | str = "auto",
    extra: Sequence[str] = (),
) -> int:
    """Start the proxy (unless one already answers on `control`) and return its pid.

    The process gets its own session so that it outlives whoever started it; its output is
    appended to `log`. Waits up to START_TIMEOUT seconds for it to answer ping.
    """
    with contextlib.suppress(ProxyUnavailable):
        return int(ping_sync(control)["pid"])
    return _spawn(home, control, pidfile, log, python, workers, extra, None)


def reload_proxy(
    home: Path,
    control: Path,
    pidfile: Path,
    log: Path,
    python: str = sys.executable,
    workers: int | str = "auto",
    drain_timeout: float = 30.0,
) -> tuple[int, int]:
    """Replace the running proxy by one of the conveyor installed now, without closing a socket.

    The new keeper (`--takeover`) takes the listening sockets and routes of the running one over
    its control socket; the old workers drain (up to `drain_timeout`) and exit. Returns the old
    and the new keeper's pids once the new one answers on `control`.
    """
    old = int(ping_sync(control)["pid"])
    extra = ("--takeover", "--drain-timeout", f"{drain_timeout:g}")
    return old, _spawn(home, control, pidfile, log, python, workers, extra, old)


def _spawn(
    home: Path,
    control: Path,
    pidfile: Path,
    log: Path,
    python: str,
    workers: int | str,
    extra: Sequence[str],
    replacing: int | None,
) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [python, "-m", "conveyor.proxy", "--control", str(control), "--pidfile", str(pidfile)]
    argv += ["--workers", str(workers), *extra]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            pid = int(ping_sync(control)["pid"])
            # Started once it answers and its pid file names it: the keeper writes the file
            # after its workers run, a little after it first answers ping.
            if pid != replacing and read_pid(pidfile) == pid:
                return pid
        except ProxyUnavailable:
            pass
        code = proc.poll()
        if code is not None:
            raise ProxyUnavailable(f"proxy exited with code {code} at start; see {log}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise ProxyUnavailable(f"proxy did not answer within {START_TIMEOUT:g}s; see {log}")
        time.sleep(0.02)
