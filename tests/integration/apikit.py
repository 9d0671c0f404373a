"""What the API tests share: `conveyor serve` run for real (its own process, a free port on
127.0.0.1), tokens made through conveyor.auth.service, and an httpx client."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from conftest import Project
from conveyor.auth.service import AuditContext, create_token, grant
from conveyor.core.access import Role
from conveyor.store.db import Store, database_url


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[str]
    lines: queue.Queue[str]  # what it printed after the URL
    verify: Any = True

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.url, headers=headers, timeout=60.0, verify=self.verify, **kw
        )


def store_of(project: Project) -> Store:
    return Store.open(
        project.database_url or database_url(project.home, project.dir / "conveyor.toml")
    )


def token(
    project: Project,
    owner: str,
    role: str,
    environment: str | None = None,
    *,
    bind: bool = True,
    expires_in: timedelta | None = timedelta(days=1),
) -> tuple[str, str]:
    """(token id, the whole token) for `owner`, granting them `role` first unless `bind` is off."""
    store = store_of(project)
    ctx = AuditContext(app="shop")
    now = datetime.now(UTC)
    try:
        if bind:
            grant(store, owner, Role(role), environment, "test", now, ctx=ctx)
        rec, whole = create_token(
            store,
            owner,
            Role(role),
            environment,
            expires_in,
            "test",
            owner,
            now,
            [],
            local=True,
            ctx=ctx,
        )
    finally:
        store.close()
    return rec.id, whole


@contextlib.contextmanager
def serve(project: Project, *args: str) -> Iterator[Served]:
    """`conveyor serve --port 0 ARGS` in the project; the URL it prints; stopped with SIGTERM
    at the end (and its exit code checked: 0)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "serve", "--port", "0", "--keepalive", "0.3s", *args],
        env=project.env,
        cwd=project.dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        first = lines.get(timeout=60)
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"conveyor serve printed nothing: {proc.stderr.read()}") from None  # type: ignore[union-attr]
    assert " on http" in first, (first, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
    url = first.split(" on ", 1)[1].split(" ", 1)[0]
    served = Served(url, proc, lines)
    try:
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("conveyor serve did not stop on SIGTERM") from None
        assert code == 0, proc.stderr.read()  # type: ignore[union-attr]


class Events:
    """An SSE client reading /api/v1/events in a thread: parsed messages in a queue."""

    def __init__(
        self, served: Served, tok: str, path: str = "/api/v1/events", last: str | None = None
    ) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.comments: queue.Queue[str] = queue.Queue()
        headers = {"Authorization": f"Bearer {tok}"}
        if last is not None:
            headers["Last-Event-ID"] = last
        self.client = httpx.Client(
            base_url=served.url, headers=headers, timeout=None, verify=served.verify
        )
        self._cm = self.client.stream("GET", path)
        self.response = self._cm.__enter__()
        self.status = self.response.status_code
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        msg: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            for line in self.response.iter_lines():
                if line.startswith(":"):
                    self.comments.put(line)
                elif line == "":
                    if "data" in msg:
                        msg["data"] = json.loads(msg["data"])
                        self.messages.put(msg)
                    msg = {}
                else:
                    key, _, value = line.partition(":")
                    msg[key] = value[1:] if value.startswith(" ") else value

    def until(self, cond: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Messages until one satisfies `cond` (it included)."""
        seen: list[dict[str, Any]] = []
        deadline = datetime.now(UTC) + timedelta(seconds=timeout)
        while True:
            left = (deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                raise AssertionError(f"no such event within {timeout}s; got {seen}")
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            seen.append(msg)
            if cond(msg):
                return seen

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cm.__exit__(None, None, None)
        self.client.close()


def free_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
