"""Reloading the proxy (docs/proxy.md, "Reload"): a new keeper takes the listening sockets and
routes over the control socket (SCM_RIGHTS); the old workers drain and exit. Under keep-alive
load nothing fails; `conveyor proxy status|reload`; the agent reloads a proxy of another
conveyor version by itself. Real processes and sockets throughout.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_proxy_support import LOCAL, connect, free_port, get, run, upstreams
from test_proxy_support import wait_for as until
from test_proxy_workers import Load, _wait_gone, named, running_proxy, status

from conftest import Project, wait_for
from conveyor import __version__
from conveyor.routers.base import Backend
from conveyor.routers.builtin import ping_sync, reload_proxy


def test_reloads_in_a_row_under_keepalive_load_fail_nothing(tmp_path: Path) -> None:
    with running_proxy(tmp_path, 2) as proxy:

        async def scenario() -> None:
            async with upstreams(("blue", named("blue"))) as (blue,):
                port = await free_port()
                await proxy.client.set_route(
                    "dev/web", (LOCAL, port), [Backend("blue", LOCAL, blue.port)]
                )
                # A second route, its address given by name: each route keeps its own sockets.
                api = await free_port()
                await proxy.client.set_route(
                    "dev/api", ("localhost", api), [Backend("blue", LOCAL, blue.port)]
                )
                load = Load(port)
                tasks = load.start(keepalive=16, fresh=2)
                await until(lambda: load.ok >= 200)
                old_keepers = []
                for _ in range(3):
                    served = load.ok
                    old, new = await asyncio.to_thread(
                        reload_proxy,
                        proxy.home,
                        proxy.control,
                        proxy.pidfile,
                        proxy.log,
                        workers=2,
                        drain_timeout=10.0,
                    )
                    assert new != old
                    old_keepers.append(old)
                    assert (await status(proxy))["pid"] == new
                    await until(lambda s=served: load.ok >= s + 300)
                load.stop.set()
                await asyncio.gather(*tasks)
                assert load.failed == [] and load.refused == 0
                # The old keepers drained and exited; their counts went to their successors.
                for pid in old_keepers:
                    await asyncio.to_thread(_wait_gone, pid)
                colors = (await proxy.client.stats())["routes"]["dev/web"]["colors"]
                assert colors["blue"]["requests"] == load.ok
                assert colors["blue"]["responses"]["2xx"] == load.ok
                assert colors["blue"]["inflight"] == 0
                routes = (await proxy.client.ping())["routes"]
                assert routes["dev/web"]["listen"] == [LOCAL, port]
                assert routes["dev/api"]["listen"] == ["localhost", api]
                r, w = await connect(api)
                assert (await get(r, w)).body == b"blue"
                w.close()

        run(scenario(), timeout=120)
    log = proxy.log.read_text()
    assert log.count("reload: took 2 listening socket(s)") == 3
    assert log.count("reload done: exiting") == 3


def _spawn_old_proxy(project: Project) -> int:
    """Make the running proxy look like an older conveyor's: take its sockets over with a keeper
    that reports version 0.0.1 (a version override, not an old package)."""
    home = project.home
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor.proxy",
            "--control",
            str(home / "proxy.sock"),
            "--pidfile",
            str(home / "proxy.pid"),
            "--workers",
            "1",
            "--takeover",
            "--drain-timeout",
            "5",
            "--report-version",
            "0.0.1",
        ],
        env=project.env,
        cwd=home,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(home / "logs" / "proxy.log", "ab"),  # noqa: SIM115 - the child holds it
        start_new_session=True,
    )
    answer = wait_for(
        lambda: _ping_version(home) == "0.0.1" and ping_sync(home / "proxy.sock"),
        what="the old-looking proxy",
    )
    return int(answer["pid"])


def _ping_version(home: Path) -> str | None:
    try:
        return str(ping_sync(home / "proxy.sock").get("version"))
    except OSError:
        return None
    except Exception:
        return None


class Getter(threading.Thread):
    """GET the app's port in a loop (new connection each time) until stopped; count failures."""

    def __init__(self, project: Project) -> None:
        super().__init__(daemon=True)
        self.project = project
        self.ok = 0
        self.failed: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                code, _, _ = self.project.get()
                if code == 200:
                    self.ok += 1
                else:
                    self.failed.append(str(code))
            except OSError as exc:
                self.failed.append(repr(exc))


def test_agent_reloads_a_proxy_of_another_version_and_the_cli_shows_it(project: Project) -> None:
    project.configure(extra="[proxy]\nworkers = 2\n")
    nothing = project.cli("proxy", "status")
    assert nothing.returncode == 1 and "no proxy runs for this project" in nothing.stderr
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    code, st = project.json("proxy", "status")
    assert code == 0, st
    assert st["version"] == st["installed"] == __version__ and len(st["workers"]) == 2
    assert project.cli("agent", "stop", "--keep-running").returncode == 0

    old = _spawn_old_proxy(project)
    shown = project.cli("proxy", "status")
    assert "conveyor 0.0.1" in shown.stdout and "`conveyor proxy reload`" in shown.stdout

    getter = Getter(project)
    getter.start()
    wait_for(lambda: getter.ok >= 20, what="traffic through the proxy")
    started = project.cli("agent", "start")
    assert started.returncode == 0, started.stderr
    # The agent reloaded it as it started: the proxy runs this conveyor now.
    code, st = project.json("proxy", "status")
    assert code == 0 and st["version"] == __version__ and st["pid"] != old, st
    assert len(st["workers"]) == 2  # [proxy] workers of conveyor.toml
    said = f"ran conveyor 0.0.1: reloaded it with conveyor {__version__}"
    assert said in (project.home / "logs" / "agent.log").read_text()
    code, agent = project.json("agent", "status")  # the notes of the agent's start
    assert code == 0 and any(said in note for note in agent["notes"]), agent
    served = getter.ok
    wait_for(lambda: getter.ok >= served + 20, what="traffic after the reload")

    # And by hand: `conveyor proxy reload`.
    bad = project.cli("proxy", "reload", "--drain-timeout", "soon")
    assert bad.returncode == 2 and "--drain-timeout: " in bad.stderr, bad.stderr
    code, done = project.json("proxy", "reload", "--drain-timeout", "5s")
    assert code == 0, done
    assert done["old"]["pid"] == st["pid"] and done["new"]["pid"] != st["pid"]
    assert done["new"]["version"] == __version__
    served = getter.ok
    wait_for(lambda: getter.ok >= served + 20, what="traffic after the second reload")
    getter.halt.set()
    getter.join(10)
    assert getter.failed == []
    assert project.serving() == "v1"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(old):
        time.sleep(0.05)
    assert not _alive(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    except OSError:
        return False


def test_a_proxy_that_cannot_hand_over_goes_on_serving(tmp_path: Path) -> None:
    """The one-process proxy (as before the keeper) does not know `handover`: the reload fails,
    says so, and the running proxy keeps its routes and its port."""
    import pytest

    from conveyor.proxy.control import ControlServer
    from conveyor.proxy.server import Proxy
    from conveyor.routers.base import ProxyUnavailable

    async def scenario() -> None:
        async with upstreams(("blue", named("blue"))) as (blue,):
            proxy = Proxy(asyncio.get_running_loop())
            control = ControlServer(proxy, tmp_path / "proxy.sock", lambda: None)
            await control.start()
            try:
                port = await free_port()
                await proxy.set_route(
                    "dev/web",
                    [LOCAL, port],
                    [{"color": "blue", "host": LOCAL, "port": blue.port, "weight": 100}],
                    None,
                )
                with pytest.raises(ProxyUnavailable, match="exited with code 1"):
                    await asyncio.to_thread(
                        reload_proxy,
                        tmp_path,
                        tmp_path / "proxy.sock",
                        tmp_path / "proxy.pid",
                        tmp_path / "proxy.log",
                        workers=1,
                    )
                assert "cannot hand over its sockets" in (tmp_path / "proxy.log").read_text()
                answer = await asyncio.to_thread(ping_sync, tmp_path / "proxy.sock")
                assert answer["pid"] == os.getpid() and "dev/web" in answer["routes"]
                load = Load(port)
                tasks = load.start(keepalive=1, fresh=1)
                await until(lambda: load.ok >= 20)
                load.stop.set()
                await asyncio.gather(*tasks)
                assert load.failed == [] and load.refused == 0
            finally:
                control.close()
                await proxy.drain(0.5)

    run(scenario(), timeout=60)
