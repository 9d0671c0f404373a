"""HAProxy as a `Router`: one HAProxy process per route, switched through its runtime API.

Each route (a public address) gets its own HAProxy, its own configuration and stats socket under
`.conveyor/haproxy/<id>/`. Switching colors, canary weights and draining are runtime-API commands
on that socket (`set server ... addr/weight/state`), never a reload. Adding or removing a route
starts or stops its own process and leaves every other route's process alone, so no client of
another route sees anything (HAProxy 2.6 closes the idle keep-alive connections of a reloaded
process, which clients racing a new request on them see as errors). Only a change of the route's
own layout (listen address, settings, an unusual color name) replaces its process, seamlessly:
the new one takes the listening sockets over from the old one (`-x`), the old one finishes what
it serves (`-sf`), and its counters are added to the new one's so the analysis window stays right.

The processes outlive the agent: a restarted agent adopts them (pid file + the process's command
line naming our configuration: a stranger is never signalled).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.routers import haproxy_api as api
from conveyor.routers.base import ColorCounters, ProxyUnavailable, RouterError, Split
from conveyor.routers.kinds import ROUTER_FEATURES

if TYPE_CHECKING:
    from conveyor.config import ResolvedEnvironment

log = logging.getLogger("conveyor.haproxy")

CALL_TIMEOUT = 5.0
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class RuntimeApi:
    """HAProxy's stats socket: one short connection per command (non-interactive mode)."""

    def __init__(self, path: Path, timeout: float = CALL_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    async def call(self, command: str) -> str:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path)), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise ProxyUnavailable(f"haproxy socket {self.path}: {exc or 'timed out'}") from exc
        try:
            writer.write(command.encode() + b"\n")
            data = await asyncio.wait_for(reader.read(), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise ProxyUnavailable(f"haproxy socket {self.path}: {exc or 'timed out'}") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return data.decode("utf-8", "replace")

    async def run(self, commands: list[str]) -> None:
        """Several commands in one round trip (the switch is one call, not one per command)."""
        if not commands:
            return
        answer = await self.call("; ".join(commands))
        refused = api.refusals(answer)
        if refused:
            raise RouterError(f"haproxy refused {'; '.join(refused)} (in {'; '.join(commands)})")

    async def rows(self) -> dict[str, Mapping[str, str]]:
        answer = await self.call("show stat")
        try:
            return api.server_rows(api.parse_stat(answer))
        except api.StatError as exc:
            raise ProxyUnavailable(f"haproxy socket {self.path}: {exc}") from exc


@dataclass
class Instance:
    """The HAProxy of one route: its files, and what conveyor last put in place there."""

    route: str
    dir: Path
    layout: api.Layout | None = None
    split: Split | None = None
    # Counters of the processes this route's current one replaced (HAProxy starts from zero).
    base: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def pidfile(self) -> Path:
        return self.dir / "haproxy.pid"

    @property
    def socket(self) -> Path:
        return socket_path(self.dir)

    @property
    def state(self) -> Path:
        return self.dir / "route.json"

    @property
    def api(self) -> RuntimeApi:
        return RuntimeApi(self.socket)

    def save(self) -> None:
        data = {
            "route": self.route,
            "layout": self.layout.to_json() if self.layout else None,
            "split": self.split.to_json() if self.split else None,
            "base": self.base,
        }
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state)

    @classmethod
    def load(cls, directory: Path) -> Instance | None:
        try:
            data = json.loads((directory / "route.json").read_text())
            return cls(
                route=str(data["route"]),
                dir=directory,
                layout=api.Layout.from_json(data["layout"]) if data.get("layout") else None,
                split=Split.from_json(data["split"]) if data.get("split") else None,
                base={c: dict(v) for c, v in dict(data.get("base") or {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def pid(self) -> int | None:
        """The pid of this route's HAProxy if it runs, judged by its command line: a pid from
        the file that now belongs to another process is not ours."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError, IndexError):
            return None
        if stat[stat.rfind(")") + 2 :].startswith(("Z", "X")):
            return None
        ours = (
            str(self.config).encode() in cmdline
            and b"haproxy" in Path(cmdline[0].decode("utf-8", "replace")).name.encode()
        )
        return pid if ours else None


class HaproxyRouter:
    """`Router` over HAProxy processes (one per route) that conveyor starts and adopts."""

    name = "haproxy"
    features = ROUTER_FEATURES["haproxy"]

    def __init__(self, home: Path, log_file: Path) -> None:
        self.root = home / "haproxy"
        self.log_file = log_file
        self.instances: dict[str, Instance] = {}
        self._lock = asyncio.Lock()

    def options(self, env: ResolvedEnvironment) -> Mapping[str, Any]:
        return {"haproxy": env.router.haproxy.model_dump()}

    def _dir(self, route: str) -> Path:
        # A short name: the stats socket's path must fit in a unix socket address (108 bytes).
        return self.root / hashlib.sha256(route.encode()).hexdigest()[:12]

    def _instance(self, route: str) -> Instance:
        found = self.instances.get(route)
        if found is None:
            found = Instance.load(self._dir(route)) or Instance(route, self._dir(route))
            self.instances[route] = found
        return found

    async def ensure(self) -> bool:
        """Adopt every route's HAProxy that still runs; True if one was missing (or none is
        known), so the engine applies its route table again."""
        missing = False
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            inst = Instance.load(directory)
            if inst is None:
                continue
            self.instances[inst.route] = inst
            if inst.pid() is None:
                missing = True
                continue
            try:
                await inst.api.call("show info")
            except ProxyUnavailable:
                missing = True
        return missing or not self.instances

    async def apply(self, split: Split) -> None:
        async with self._lock:
            inst = self._instance(split.route)
            layout = api.Layout.of(split)
            pid = inst.pid()
            if pid is None or layout != inst.layout:
                await self._start(inst, split, layout, replacing=pid)
            else:
                await inst.api.run(api.commands(split, layout.servers))
            inst.split = split
            inst.layout = layout
            # The configuration always says where things are now: a restart starts right.
            _write(inst.config, api.config_text(split, str(inst.socket)))
            inst.save()

    async def _start(
        self, inst: Instance, split: Split, layout: api.Layout, replacing: int | None
    ) -> None:
        inst.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        binary = str(api.settings(split.options)["binary"])
        if shutil.which(binary) is None:
            raise RouterError(
                f"HAProxy not found at {binary} (install the haproxy package, or set "
                "[router.haproxy] binary)"
            )
        base: dict[str, dict[str, int]] = {}
        if replacing is not None:
            # What the old process counted is added to what the new one will: one window.
            base = dict(inst.base)
            with contextlib.suppress(ProxyUnavailable):
                for color, row in (await inst.api.rows()).items():
                    base[color] = api.add(base.get(color, {}), api.raw_counters(row))
        previous = inst.config.read_text() if inst.config.exists() else None
        _write(inst.config, api.config_text(split, str(inst.socket)))
        try:
            await self._spawn(inst, split, binary, replacing)
        except RouterError:
            if previous is not None and replacing is not None:
                _write(inst.config, previous)  # the old process goes on with its configuration
            raise
        inst.base = base

    async def _spawn(
        self, inst: Instance, split: Split, binary: str, replacing: int | None
    ) -> None:
        argv = [binary, "-D", "-p", str(inst.pidfile), "-f", str(inst.config)]
        if replacing is not None:
            argv += ["-x", str(inst.socket), "-sf", str(replacing)]
        else:
            inst.socket.unlink(missing_ok=True)
        # The daemon keeps a pipe open for good: its start-up output goes to a file instead.
        started = inst.dir / "start.log"
        with open(started, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            await asyncio.wait_for(proc.wait(), START_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise ProxyUnavailable(
                f"haproxy for {inst.route} did not start in {START_TIMEOUT:g}s"
            ) from None
        output = started.read_bytes()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log_out:
            log_out.write(output)
        if proc.returncode != 0:
            # HAProxy says why (e.g. "cannot bind socket"): pass its alerts on.
            alerts = [
                line.strip()
                for line in output.decode("utf-8", "replace").splitlines()
                if "ALERT" in line
            ]
            raise RouterError(
                f"haproxy for {inst.route} on {split.host}:{split.port} did not start: "
                + ("; ".join(alerts[-3:]) or f"exit code {proc.returncode}, see {self.log_file}")
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                await inst.api.call("show info")
                break
            except ProxyUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
        log.info("haproxy for %s runs (pid %s)", inst.route, inst.pid())

    async def remove(self, route: str) -> None:
        async with self._lock:
            inst = self._instance(route)
            await _stop(inst)
            inst.socket.unlink(missing_ok=True)  # it may live outside the directory
            shutil.rmtree(inst.dir, ignore_errors=True)
            self.instances.pop(route, None)

    async def _rows(self, route: str) -> tuple[Instance, dict[str, Mapping[str, str]]] | None:
        inst = self.instances.get(route) or Instance.load(self._dir(route))
        if inst is None or inst.split is None:
            return None
        return inst, await inst.api.rows()

    async def inflight(self, route: str, color: str) -> int | None:
        found = await self._rows(route)
        if found is None:
            return None
        row = found[1].get(color)
        return 0 if row is None else api.inflight(row)

    async def counters(self, route: str) -> Mapping[str, ColorCounters] | None:
        found = await self._rows(route)
        if found is None:
            return None
        inst, rows = found
        live = {b.color for b in inst.split.backends} if inst.split else set()
        out: dict[str, ColorCounters] = {}
        for color in {*rows, *inst.base}:
            row = rows.get(color, {})
            raw = api.add(inst.base.get(color, {}), api.raw_counters(row))
            # The parked colors no traffic ever reached are left out, as the built-in proxy does.
            if raw.get("stot", 0) or color in live:
                out[color] = api.color_counters(raw, api.inflight(row))
        return out

    async def shutdown(self) -> None:
        async with self._lock:
            if self.root.is_dir():
                for directory in self.root.iterdir():
                    inst = Instance.load(directory)
                    if inst is not None:
                        await _stop(inst)


async def _stop(inst: Instance) -> None:
    """Soft-stop the route's HAProxy (it finishes the requests it serves), bounded in time."""
    pid = inst.pid()
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + STOP_TIMEOUT
    while inst.pid() == pid:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            break
        await asyncio.sleep(0.02)


# HAProxy refuses a unix socket path longer than this (sun_path less its own suffixes).
MAX_SOCKET_PATH = 97


def socket_path(directory: Path) -> Path:
    """The route's stats socket: in its directory when the path is short enough for HAProxy,
    else in a private directory of this user under $XDG_RUNTIME_DIR or the temp directory,
    named by a hash of the route's directory (the same path for a restarted agent)."""
    inside = directory / "stats.sock"
    if len(str(inside)) <= MAX_SOCKET_PATH:
        return inside
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    private = base / f"conveyor-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    st = private.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        # Someone else's directory, or one others can enter: the admin socket stays out of it.
        raise RouterError(f"{private} must belong to this user with mode 0700 (it holds sockets)")
    return private / f"{hashlib.sha256(str(directory).encode()).hexdigest()[:16]}.sock"


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
