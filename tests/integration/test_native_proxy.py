"""The proxy's compiled hot path (native.py, docs/proxy.md "Compiled hot path"): built here with
mypyc into a directory of the test's own, then real proxy processes and the proxy's own suites
run on it. Without a C compiler, Python's headers or mypy this is a skip on a laptop and a
failure under CI=true (.ci/run installs them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_proxy_support import (
    LOCAL,
    Request,
    connect,
    free_port,
    get,
    read_response,
    reply,
    run,
    upstreams,
)
from test_proxy_workers import running_proxy, status

from conveyor.proxy import native
from conveyor.routers.base import Backend

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("native-proxy")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A build of the current sources in a directory of this module's own; yields its root."""
    root = tmp_path_factory.mktemp("native")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVEYOR_NATIVE_DIR", str(root))
        try:
            where, built = native.compile_hot_path()
        except native.BuildError as exc:
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true but {exc}")
            pytest.skip(str(exc))
        assert built and where.parent == root
        # Built once: asked again, the same build is kept.
        assert native.compile_hot_path() == (where, False)
    yield root


def _serves(proxy_home: Path, workers: int) -> dict[str, object]:
    """Start a proxy, send requests of several kinds through it; return its status."""
    with running_proxy(proxy_home, workers) as proxy:

        async def scenario() -> dict[str, object]:
            async with upstreams(("blue", _echo)) as (blue,):
                port = await free_port()
                await proxy.client.set_route(
                    "dev/web", (LOCAL, port), [Backend("blue", LOCAL, blue.port)]
                )
                r, w = await connect(port)
                try:
                    for i in range(50):  # keep-alive: the pooled connection's path too
                        resp = await get(r, w, target=f"/n/{i}")
                        assert (resp.status, resp.body) == (200, f"GET /n/{i} 0".encode())
                    w.write(
                        b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n0\r\n\r\n"
                    )
                    resp = await read_response(r)
                    assert (resp.status, resp.body) == (200, b"POST /p 3")
                    w.write(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n")
                    assert (await read_response(r)).status == 400
                finally:
                    w.close()
                return await status(proxy)

        result: dict[str, object] = run(scenario(), timeout=60)
    return result


async def _echo(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    reply(writer, 200, f"{req.method} {req.target} {len(req.body)}".encode())


def test_proxy_processes_run_compiled_and_say_so(
    build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_NATIVE_DIR", str(build))
    state = _serves(tmp_path, 2)
    workers = state["workers"]
    assert isinstance(workers, list) and len(workers) == 2
    assert {w["hot_path"] for w in workers} == {"compiled"}
    log = (tmp_path / "logs" / "proxy.log").read_text()
    assert f"hot path: compiled ({native.build_dir()})" in log


def test_a_build_that_does_not_load_is_dropped(
    build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken"
    monkeypatch.setenv("CONVEYOR_NATIVE_DIR", str(build))
    shutil.copytree(native.build_dir(), broken / native.build_key())
    (ext,) = (broken / native.build_key() / "conveyor" / "proxy").glob("downstream.*")
    ext.write_bytes(b"not a shared object")
    monkeypatch.setenv("CONVEYOR_NATIVE_DIR", str(broken))
    state = _serves(tmp_path / "home", 1)
    workers = state["workers"]
    assert isinstance(workers, list)
    assert [w["hot_path"] for w in workers] == ["interpreted"]
    log = (tmp_path / "home" / "logs" / "proxy.log").read_text()
    assert "hot path: interpreted (the build in" in log and "did not load" in log


def test_the_switch_off_runs_the_source(
    build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_NATIVE_DIR", str(build))
    monkeypatch.setenv("CONVEYOR_PROXY_NATIVE", "0")
    state = _serves(tmp_path, 1)
    assert [w["hot_path"] for w in state["workers"]] == ["interpreted"]  # type: ignore[union-attr]
    log = (tmp_path / "logs" / "proxy.log").read_text()
    assert "hot path: interpreted (CONVEYOR_PROXY_NATIVE=0)" in log


def test_the_proxy_suites_pass_compiled(build: Path) -> None:
    """Every unit and integration test of the proxy, its modules loaded from the build."""
    suites = sorted(
        str(p.relative_to(ROOT))
        for d in ("unit", "integration")
        for p in (ROOT / "tests" / d).glob("test_proxy_*.py")
    )
    assert len(suites) > 15
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", *suites],
        cwd=ROOT,
        env={**os.environ, "CONVEYOR_NATIVE_DIR": str(build), "CONVEYOR_TEST_PROXY_NATIVE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = done.stdout.splitlines()
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR", "E "))]
    said = "\n".join(failures[:40] + lines[-3:]) + done.stderr[-2000:]
    assert done.returncode == 0, said
    assert " passed" in lines[-1] and "failed" not in lines[-1], said


def test_compile_force_builds_again_in_place(build: Path) -> None:
    """`conveyor proxy compile --force --json`: a new build of the same key replaces the old."""
    env = {**os.environ, "CONVEYOR_NATIVE_DIR": str(build)}
    before = json.loads((native.build_dir() / "manifest.json").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "proxy", "compile", "--force", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["built"] is True and Path(result["path"]).parent == build
    after = json.loads((Path(result["path"]) / "manifest.json").read_text())
    assert after["key"] == before["key"] and after["built_at"] > before["built_at"]
    assert sorted(p.name for p in build.iterdir()) == [before["key"]]  # nothing left behind
    again = subprocess.run(
        [sys.executable, "-m", "conveyor", "proxy", "compile", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert json.loads(again.stdout)["built"] is False
