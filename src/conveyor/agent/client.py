"""The CLI's side of the agent socket; starts the agent in the background when none runs."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.agent import runs
from conveyor.paths import Paths

Progress = Callable[[dict[str, Any]], None]
# How the agent's last line in agent.log starts when it cannot start at all (a broken database).
START_ERROR = "conveyor agent cannot start: "


class AgentUnavailable(Exception):
    pass


class AgentClient:
    def __init__(self, project_dir: Path, paths: Paths) -> None:
        self.project_dir = project_dir
        self.paths = paths
        # The new agent's ping answer when this client had to start it (see ensure()).
        self.started: dict[str, Any] | None = None

    def request(
        self, req: dict[str, Any], on_progress: Progress | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one request; feed progress lines to `on_progress`; return the result line."""
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5.0)
            sock.connect(str(self.paths.agent_socket))
        except OSError as exc:
            raise AgentUnavailable(str(exc)) from exc
        with sock:
            sock.sendall(json.dumps(req).encode() + b"\n")
            sock.settimeout(timeout)
            with sock.makefile("rb") as stream:
                for line in stream:
                    msg = json.loads(line)
                    if msg.get("type") == "result":
                        return dict(msg)
                    if on_progress is not None:
                        on_progress(msg)
        raise AgentUnavailable("the agent closed the connection without an answer")

    def ping(self) -> dict[str, Any] | None:
        try:
            result = self.request({"op": "ping"}, timeout=5.0)
        except (AgentUnavailable, OSError, ValueError):
            return None
        return dict(result.get("data") or {})

    def ensure(self, timeout: float = 30.0) -> dict[str, Any]:
        """Return the running agent's ping answer, starting the agent first if needed.

        The agent answers only once its recovery is over, so what the caller asks next sees the
        state recovery left. When this call started it, `self.started` holds the answer.
        """
        info = self.ping()
        if info is not None:
            return info
        proc = self.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.ping()
            if info is not None:
                self.started = info
                return info
            if proc.poll() is not None and not self._lock_held():
                # It ended without serving and no other agent holds the project (one that won
                # a race to start would): it says why in its last line.
                raise AgentUnavailable(self._start_error())
            time.sleep(0.02)
        raise AgentUnavailable(
            f"the agent did not answer within {timeout:g}s; see {self.paths.agent_log}"
        )

    def _lock_held(self) -> bool:
        """Whether an agent holds the project's lock (it runs, or is starting)."""
        try:
            with open(self.paths.home / "agent.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # closing the file released it

    def _start_error(self) -> str:
        try:
            lines = self.paths.agent_log.read_text(errors="replace").splitlines()[-20:]
        except OSError:
            lines = []
        for line in reversed(lines):
            if line.startswith(START_ERROR):
                return line[len(START_ERROR) :]
        return f"the agent exited at start; see {self.paths.agent_log}"

    def start(self) -> subprocess.Popen[bytes]:
        self.paths.ensure()
        with open(self.paths.agent_log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor.agent", "--project", str(self.project_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.project_dir,
                start_new_session=True,  # the agent outlives this CLI call
                env=os.environ.copy(),
            )
        return proc

    def stop(self, keep_running: bool, timeout: float = 60.0) -> bool:
        """Ask the agent to stop and wait until it is gone. False if it was not running."""
        try:
            self.request({"op": "stop", "keep_running": keep_running}, timeout=10.0)
        except (AgentUnavailable, OSError):
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Gone means the process ended (its lock released), not only its socket: until then
            # a supervision pass may still act (say, reload a proxy just replaced by hand).
            if (
                not self.paths.agent_socket.exists()
                and self.ping() is None
                and not self._lock_held()
            ):
                return True
            time.sleep(0.05)
        raise AgentUnavailable(f"the agent did not stop within {timeout:g}s")

    def info(self) -> dict[str, Any] | None:
        """The agent's record (agent.json): the running agent's, or the last one's."""
        return runs.read(self.paths.home)
