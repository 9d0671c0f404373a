"""A real conveyor project in a temp directory, driven through the real CLI, agent and proxy."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from conveyor.demo import demo_app_source
from conveyor.runtimes.local import free_port, read_proc_stat

CONFIG = """\
[app]
name = "shop"

[services.web]
command = "{python} app.py --port {{port}}"
port = {port}
stop_timeout = "3s"

[services.web.health]
path = "/healthz"
interval = "100ms"
timeout = "1s"
healthy_threshold = 2
start_timeout = "{start_timeout}"
{extra_services}
[rollout]
standby = "{standby}"
drain_timeout = "2s"
{rollout}

[environments.dev]
{extra}
"""

WORKER = """
[services.jobs]
kind = "worker"
command = "{python} worker.py"

[services.jobs.health]
interval = "100ms"
"""


def unavailable(reason: str) -> NoReturn:
    """Something a test needs is missing here: a skip on a laptop, a failure under CI=true (where
    it is part of the environment, and a skip would leave that code silently untested)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


# Generous: on a loaded 2-core machine (CI runs 4 test workers) starting processes is slow.
def wait_for(cond: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def switched_back_by_itself(project: Project) -> list[dict[str, Any]]:
    """Wait for an automatic rollback of v2 to v1 to be recorded; check it; the history.

    Waited for in the history, not in what the port serves: the switch back moves traffic first
    and writes the history after, and the proxy's retry on the standby serves v1 earlier still.
    """

    def ended() -> list[dict[str, Any]] | None:
        code, hist = project.history("dev")
        assert code == 0, hist
        done = hist and hist[0]["kind"] == "rollback" and hist[0]["outcome"] != "in_progress"
        return hist if done else None

    hist: list[dict[str, Any]] = wait_for(ended, what="the automatic switch back")
    assert project.serving() == "v1"
    assert [(d["version"], d["kind"], d["outcome"]) for d in hist[:2]] == [
        ("v1", "rollback", "succeeded"),
        ("v2", "deploy", "rolled_back"),
    ]
    return hist


class Project:
    def __init__(self, root: Path, database_url: str | None = None) -> None:
        self.dir = root
        self.port = free_port()
        self.home = root / ".conveyor"
        self.env = {**os.environ, "CONVEYOR_PROJECT": str(root)}
        for key in ("CONVEYOR_HOME", "CONVEYOR_DATABASE_URL", "CONVEYOR_USER"):
            self.env.pop(key, None)
        # None: the SQLite file in .conveyor/; else the PostgreSQL database it runs on.
        self.database_url = database_url
        if database_url is not None:
            self.env["CONVEYOR_DATABASE_URL"] = database_url
        src = demo_app_source()
        for name in ("app.py", "worker.py"):
            shutil.copy(src / name, root / name)

    def configure(
        self,
        standby: str = "60s",
        start_timeout: str = "5s",
        worker: bool = False,
        extra: str = "",
        rollout: str = 'bake = "0s"',
    ) -> None:
        python = sys.executable
        (self.dir / "conveyor.toml").write_text(
            CONFIG.format(
                python=python,
                port=self.port,
                standby=standby,
                start_timeout=start_timeout,
                extra_services=WORKER.format(python=python) if worker else "",
                extra=extra,
                rollout=rollout,
            )
        )

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor", *args],
            env=self.env,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """A conveyor command left running (read its stdout and stderr pipes)."""
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor", *args],
            env=self.env,
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def json(self, *args: str) -> tuple[int, Any]:
        proc = self.cli(*args, "--json")
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else None
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not JSON: {proc.stdout!r} {proc.stderr!r}") from exc
        return proc.returncode, data

    def history(self, env: str) -> tuple[int, Any]:
        """`history --env ENV --json`: the exit code and the deployments (or the error object)."""
        code, data = self.json("history", "--env", env)
        return code, data["deployments"] if code == 0 else data

    def release(self, version: str, **behaviour: Any) -> None:
        (self.dir / "demo.json").write_text(json.dumps({"version": version, **behaviour}))
        proc = self.cli("release", "create", "--version", version)
        assert proc.returncode == 0, proc.stderr

    def deploy(self, version: str, env: str = "dev") -> tuple[int, Any]:
        return self.json("deploy", version, "--env", env)

    def get(self, path: str = "/", port: int | None = None) -> tuple[int, str, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode()
            return resp.status, body, resp.getheader("X-Demo-Version") or ""
        finally:
            conn.close()

    def serving(self) -> str:
        try:
            return self.get()[2]
        except OSError:
            return ""

    def db(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a query on the project's state (SQLite's json_extract works on both)."""
        if self.database_url is None:
            with contextlib.closing(sqlite3.connect(self.home / "state.db")) as conn:
                return list(conn.execute(sql))
        from sqlalchemy import create_engine, text

        from conveyor.store.db import normalize_url

        engine = create_engine(normalize_url(self.database_url))
        try:
            with engine.begin() as conn:
                return [tuple(row) for row in conn.execute(text(_postgres_sql(sql)))]
        finally:
            engine.dispose()

    def pid(self, name: str) -> int | None:
        try:
            return int((self.home / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        self.cli("agent", "stop", "--yes", timeout=90)  # above its own 60 s bound
        # Belt and braces: whatever survived a failed test must not leak into the next one. Only
        # processes that are provably ours are killed: pids are reused quickly on this machine.
        groups: list[int] = []
        with contextlib.suppress(Exception):  # no database, no table: nothing was started
            for pid, start, pgid in self.db(f"SELECT {PID}, {PROC_START}, {PGID} FROM instances"):
                stat = read_proc_stat(pid) if pid else None
                if stat is not None and stat.start == start and pgid:
                    groups.append(pgid)
        for name in ("proxy", "agent"):
            pid = self.pid(name)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if pid else b""
            except OSError:
                continue
            if pid and str(self.dir).encode() in cmdline:
                groups.append(pid)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


_JSON_EXTRACT = re.compile(r"json_extract\((\w+), '\$\.([^']+)'\)")


def _postgres_sql(sql: str) -> str:
    """SQLite's json_extract(col, '$.a.b[0].c') as PostgreSQL's path operator (numbers only:
    the tests read pids, process start times and ports)."""

    def path(match: re.Match[str]) -> str:
        steps = match[2].replace("[", ".").replace("]", "").split(".")
        return f"(({match[1]})::jsonb #>> '{{{','.join(steps)}}}')::bigint"

    return _JSON_EXTRACT.sub(path, sql)


# The local runtime's identity of a color, inside its handle (JSON) in the instances table.
PID = "json_extract(handle, '$.ref.pid')"
PGID = "json_extract(handle, '$.ref.pgid')"
PROC_START = "json_extract(handle, '$.ref.proc_start')"

Proc = tuple[int, int]  # (pid, start time in clock ticks): a pid alone may be reused


def proc(pid: int) -> Proc:
    """Identify a running process by its pid and kernel start time."""
    stat = read_proc_stat(pid)
    assert stat is not None, f"process {pid} is not running"
    return pid, stat.start


def alive(p: Proc) -> bool:
    stat = read_proc_stat(p[0])
    return stat is not None and stat.state not in ("Z", "X") and stat.start == p[1]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_databases: the test's `project` runs once on SQLite and once on PostgreSQL",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The end-to-end tests marked both_databases run twice: the whole product (agent, every
    # command) on SQLite, then on the PostgreSQL server, a fresh database for each test.
    if "project" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_databases"
    ):
        metafunc.parametrize("project", ["sqlite", "postgresql"], indirect=True)


@contextlib.contextmanager
def temp_project(database_url: str | None = None) -> Iterator[Project]:
    root = Path(tempfile.mkdtemp(prefix="cv", dir="/tmp"))
    proj = Project(root, database_url)
    try:
        yield proj
    finally:
        proj.cleanup()
        if not os.environ.get("CONVEYOR_TEST_KEEP"):  # set it to look at a failed test's state
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def project(request: pytest.FixtureRequest) -> Iterator[Project]:
    if getattr(request, "param", "sqlite") == "sqlite":
        with temp_project() as proj:
            yield proj
        return
    with temp_project(request.getfixturevalue("fresh_pg_url")) as proj:
        yield proj
