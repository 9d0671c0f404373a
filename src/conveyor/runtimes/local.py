"""LocalRuntime: services as local processes, each in its own session and process group.

The processes must outlive the agent (a restarted agent adopts them again), so they get no
pipes to us: their output goes straight to a log file, stdin is /dev/null, and each one leads a
new session. Stopping signals the whole process group so helpers the app forked go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from conveyor.runtimes.base import ColorSpec, Instance, RuntimeStartError

POLL_INTERVAL = 0.05
# Handles of exited children are kept for exit_detail(); a long-running agent starts
# processes on every deploy, so only this many finished ones are remembered.
KEEP_FINISHED = 256
# After SIGKILL the kernel tears the process down promptly; this only bounds the wait
# for a process stuck in uninterruptible sleep so stop() always returns.
KILL_WAIT = 5.0


@dataclass(frozen=True)
class ProcStat:
    state: str
    pgrp: int
    start: int


def read_proc_stat(pid: int) -> ProcStat | None:
    """Parse /proc/<pid>/stat; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2 is "(comm)" and comm may contain spaces and parentheses, so the fixed
    # fields are only safe to split after the *last* closing parenthesis.
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    return ProcStat(state=rest[0], pgrp=int(rest[2]), start=int(rest[19]))


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalRuntime:
    def __init__(self) -> None:
        # Children spawned by this object, keyed by (pid, proc_start) so a reused pid
        # never matches a stale handle.
        self._children: dict[tuple[int, int], subprocess.Popen[bytes]] = {}

    def start(self, spec: ColorSpec) -> Instance:
        try:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise RuntimeStartError(f"cannot open log {spec.log_path}: {e}") from e
        try:
            port = "-" if spec.port is None else str(spec.port)
            header = f"--- {_utc_now()} start {spec.service} {spec.color} {spec.version} port={port} ---\n"
            os.write(log_fd, header.encode())
            # "exec" makes the shell replace itself with the command, so the pid we record is
            # the app's own while shell syntax ($VARS, quoting) in the command still works.
            proc = subprocess.Popen(
                ["/bin/sh", "-c", f"exec {spec.command}"],
                cwd=spec.cwd,
                env=dict(spec.env),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                close_fds=True,
            )
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the command or env
            raise RuntimeStartError(f"cannot start {spec.command!r} in {spec.cwd}: {e}") from e
        finally:
            os.close(log_fd)
        # The process is our unreaped child, so its /proc entry exists even if it already exited.
        stat = read_proc_stat(proc.pid)
        if stat is None:  # pragma: no cover - only if someone else reaped our child
            raise RuntimeStartError(f"process {proc.pid} vanished right after start")
        self._children[(proc.pid, stat.start)] = proc
        self._forget_old_exits()
        return Instance(
            pid=proc.pid,
            pgid=proc.pid,
            port=spec.port,
            proc_start=stat.start,
            started_at=time.time(),
            log_path=spec.log_path,
        )

    def _forget_old_exits(self) -> None:
        finished = [key for key, proc in self._children.items() if proc.poll() is not None]
        # Dicts keep insertion order, so the first ones are the oldest.
        for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._children[key]

    def adopt(
        self,
        pid: int,
        pgid: int,
        port: int | None,
        proc_start: int,
        started_at: float,
        log_path: Path,
    ) -> Instance:
        """The record of a process started by an earlier agent; check it with alive()."""
        return Instance(
            pid=pid,
            pgid=pgid,
            port=port,
            proc_start=proc_start,
            started_at=started_at,
            log_path=log_path,
        )

    def alive(self, inst: Instance) -> bool:
        proc = self._children.get((inst.pid, inst.proc_start))
        if proc is not None:
            # poll() also reaps the zombie and keeps the exit status for exit_detail().
            return proc.poll() is None
        stat = read_proc_stat(inst.pid)
        return stat is not None and stat.start == inst.proc_start and stat.state not in ("Z", "X")

    def exit_detail(self, inst: Instance) -> str:
        proc = self._children.get((inst.pid, inst.proc_start))
        if proc is None:
            # Adopted: not our child, so its exit status went to its real parent.
            return "running" if self.alive(inst) else "not running"
        code = proc.poll()
        if code is None:
            return "running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"killed by {name}"
        return f"exited with code {code}"

    async def stop(self, inst: Instance, grace: float) -> None:
        # Runs on the agent's event loop: wait by sleeping asynchronously, never block.
        for pause in self._stop_steps(inst, grace):
            await asyncio.sleep(pause)

    def stop_sync(self, inst: Instance, grace: float) -> None:
        """stop() for callers without an event loop."""
        for pause in self._stop_steps(inst, grace):
            time.sleep(pause)

    def _stop_steps(self, inst: Instance, grace: float) -> Iterator[float]:
        """The stop sequence; yields how long to pause between checks (the caller sleeps)."""
        if not self._group_is_ours(inst):
            return
        if self.alive(inst):
            self._signal_group(inst, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.alive(inst) and time.monotonic() < deadline:
                yield POLL_INTERVAL
            if self.alive(inst):
                self._signal_group(inst, signal.SIGKILL)
                deadline = time.monotonic() + KILL_WAIT
                while self.alive(inst) and time.monotonic() < deadline:
                    yield POLL_INTERVAL
        # The leader is gone; whatever it forked into its group and that shrugged off
        # SIGTERM goes now, so a stopped color leaves nothing behind.
        if self._group_is_ours(inst):
            self._signal_group(inst, signal.SIGKILL)

    def _group_is_ours(self, inst: Instance) -> bool:
        """May we signal inst.pgid without hitting a stranger?"""
        stat = read_proc_stat(inst.pid)
        if stat is None:
            # The leader is gone. A process group id stays allocated while the group has
            # members, so a group still answering to this id holds only our leftovers.
            return True
        return stat.start == inst.proc_start

    @staticmethod
    def _signal_group(inst: Instance, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(inst.pgid, sig)


def tail(log_path: Path, lines: int = 20) -> list[str]:
    """The last `lines` lines of a log, reading backwards from the end in blocks."""
    if lines <= 0:
        return []
    block = 8192
    data = b""
    try:
        with open(log_path, "rb") as f:
            pos = f.seek(0, os.SEEK_END)
            # One newline more than needed: the text before it is the (partial) earlier line.
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", "replace")
    result = text.splitlines()
    if pos > 0:
        result = result[1:]  # the first one is cut somewhere in the middle
    return result[-lines:]


# Private ports are picked below the kernel's ephemeral range: a port from that range can be
# taken as the source port of any outgoing connection (the proxy's own upstream connections,
# for one) between the moment it is picked and the moment the app binds it.
PRIVATE_PORTS_LOW = 10000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody is listening on right now, outside the ephemeral range when there is room."""
    high = _ephemeral_low() - 1
    if high - PRIVATE_PORTS_LOW >= 1000:
        for _ in range(64):
            port = random.randint(PRIVATE_PORTS_LOW, high)
            if _bindable(host, port):
                return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        found: int = s.getsockname()[1]
        return found
