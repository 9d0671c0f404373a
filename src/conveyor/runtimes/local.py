"""LocalRuntime: services as local processes, each in its own session and process group.

The processes must outlive the agent (a restarted agent adopts them again), so they get no
pipes to us: their stdout and stderr go to a log writer of their own (runtimes/logshim.py, in
its own session too), which stamps each line with its time and stream; stdin is /dev/null, and
each one leads a new session. Stopping signals the whole process group so helpers the app
forked go with it.

A death is known when it happens: each process we start or adopt gets a pidfd (Linux >= 5.3),
which the event loop watches (`exited`). Without pidfds (older kernels) `exited` says it cannot
watch, and the engine notices an exit on its next check, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from conveyor.ports import PRIVATE_PORTS_LOW, _bindable, _ephemeral_low, free_port
from conveyor.procs import ProcStat, read_proc_stat
from conveyor.runtimes import logshim
from conveyor.runtimes.base import Endpoint, Handle, RunState, RuntimeStartError, Workload
from conveyor.runtimes.logfile import tail

POLL_INTERVAL = 0.05
# Handles of exited children are kept for exit_detail(); a long-running agent starts
# processes on every deploy, so only this many finished ones are remembered.
KEEP_FINISHED = 256
# After SIGKILL the kernel tears the process down promptly; this only bounds the wait
# for a process stuck in uninterruptible sleep so stop() always returns.
KILL_WAIT = 5.0
# How often `logs(follow=True)` looks for new output.
FOLLOW_INTERVAL = 0.2
# How long tail() waits for the log writer of a process that has exited to write what was still
# in its pipes (it ends at once, unless a helper the app forked holds them open).
LOG_SETTLE = 0.5


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Proc:
    """A process of ours: its pid, its group, and its kernel start time (pid reuse guard)."""

    pid: int
    pgid: int
    start: int

    @classmethod
    def of(cls, h: Handle) -> Proc | None:
        try:
            return cls(
                int(h.ref["pid"]), int(h.ref.get("pgid", h.ref["pid"])), int(h.ref["proc_start"])
            )
        except (KeyError, TypeError, ValueError):
            return None


class LocalRuntime:
    """`Runtime` for local processes; output goes to `<log_dir>/<env>/<service>/<color>.log`."""

    name = "local"
    host = "127.0.0.1"

    def __init__(self, log_dir: Path, pidfds: bool | None = None) -> None:
        self.log_dir = log_dir
        # Children spawned by this object, keyed by (pid, proc_start) so a reused pid
        # never matches a stale handle.
        self._children: dict[tuple[int, int], subprocess.Popen[bytes]] = {}
        # A pidfd names one process for good (a reused pid is another process), so a
        # stranger is never watched; opened at start and at adoption, closed once it ended.
        self.pidfds = pidfds_work() if pidfds is None else pidfds
        self._pidfds: dict[tuple[int, int], int] = {}
        # The log writers started here, reaped once they end (after their process).
        self._writers: list[subprocess.Popen[bytes]] = []

    def log_path(self, environment: str, service: str, color: str) -> Path:
        return self.log_dir / environment / service / f"{color}.log"

    async def start(self, w: Workload) -> Handle:
        return self.start_sync(w)

    def start_sync(self, w: Workload) -> Handle:
        if w.command is None:
            raise RuntimeStartError(f"{w.service} has no command to run")
        port = w.port
        if port is not None and (port == 0 or not _bindable(self.host, port)):
            # 0: ours to choose. A taken port (a restart whose old port someone took meanwhile)
            # gets a fresh one: the route follows the handle's endpoint.
            port = free_port(self.host)
        command = w.command if port is None else w.command.replace("{port}", str(port))
        env = dict(w.env)
        if port is not None:
            env["PORT"] = str(port)
        cwd = (Path(w.artifact) / str(w.options.get("workdir", "."))).resolve()
        log_path = self.log_path(w.environment, w.service, w.color)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise RuntimeStartError(f"cannot open log {log_path}: {e}") from e
        try:
            shown = "-" if port is None else str(port)
            header = f"--- {_utc_now()} start {w.service} {w.color} {w.version} port={shown} ---"
            os.write(log_fd, logshim.record("conveyor", header.encode()))
            stdout, stderr, writer = logshim.start(log_fd, str(log_path), w.secrets)
            self._writers.append(writer)
            try:
                # "exec" makes the shell replace itself with the command, so the pid we record
                # is the app's own while shell syntax ($VARS, quoting) in the command still works.
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", f"exec {command}"],
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                    close_fds=True,
                )
            finally:
                # The app holds the write ends now: the writer ends when the app (and whatever
                # it forked) has closed them.
                os.close(stdout)
                os.close(stderr)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the command or env
            raise RuntimeStartError(f"cannot start {command!r} in {cwd}: {e}") from e
        finally:
            os.close(log_fd)
        # The process is our unreaped child, so its /proc entry exists even if it already exited.
        stat = read_proc_stat(proc.pid)
        if stat is None:  # pragma: no cover - only if someone else reaped our child
            raise RuntimeStartError(f"process {proc.pid} vanished right after start")
        self._children[(proc.pid, stat.start)] = proc
        self._pidfd(Proc(proc.pid, proc.pid, stat.start))
        self._forget_old_exits()
        writer_stat = read_proc_stat(writer.pid)
        return Handle(
            runtime=self.name,
            ref={
                "pid": proc.pid,
                "pgid": proc.pid,
                "proc_start": stat.start,
                "log": str(log_path),
                "writer": writer.pid,
                "writer_start": writer_stat.start if writer_stat is not None else 0,
            },
            endpoints=(Endpoint(self.host, port),) if port is not None else (),
            started_at=time.time(),
        )

    def _forget_old_exits(self) -> None:
        finished = [key for key, proc in self._children.items() if proc.poll() is not None]
        # Dicts keep insertion order, so the first ones are the oldest.
        for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._children[key]
        for key in finished:
            self._close_pidfd(key)
        self._writers = [writer for writer in self._writers if writer.poll() is None]

    async def adopt(self, h: Handle) -> Handle | None:
        """The handle of a process started by an earlier agent, if that very process runs."""
        if h.runtime != self.name or not self.alive(h):
            return None
        p = Proc.of(h)
        assert p is not None  # alive() parsed it
        self._pidfd(p)
        return h

    async def state(self, h: Handle) -> RunState:
        alive = self.alive(h)
        return RunState(alive, "running" if alive else self.exit_detail(h))

    async def exited(self, h: Handle) -> RunState | None:
        p = Proc.of(h)
        fd = self._pidfd(p) if p is not None and self.alive(h) else None
        if fd is None:
            return None if self.alive(h) else RunState(False, self.exit_detail(h))
        assert p is not None
        # One reader per file descriptor and event loop: each waiter watches its own copy.
        mine = os.dup(fd)
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[float] = loop.create_future()

        def readable() -> None:
            if not ended.done():
                ended.set_result(time.time())

        loop.add_reader(mine, readable)
        try:
            at = await ended
        finally:
            loop.remove_reader(mine)
            os.close(mine)
        self._close_pidfd((p.pid, p.start))
        return RunState(False, self.exit_detail(h), at)

    def _pidfd(self, p: Proc) -> int | None:
        """The pidfd of our process p, opened on first use; None if it cannot be had."""
        key = (p.pid, p.start)
        if not self.pidfds or key in self._pidfds:
            return self._pidfds.get(key)
        child = self._children.get(key)
        if child is not None and child.returncode is not None:
            return None  # reaped: the pid may be someone else's by now
        try:
            fd = os.pidfd_open(p.pid)
        except OSError:
            return None  # gone already
        if child is None:
            # Not our child, so the pid may have been reused before the open: the start time
            # read after it says whether the pidfd names our process.
            stat = read_proc_stat(p.pid)
            if stat is None or stat.start != p.start:
                os.close(fd)
                return None
        self._pidfds[key] = fd
        return fd

    def _close_pidfd(self, key: tuple[int, int]) -> None:
        fd = self._pidfds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def alive(self, h: Handle) -> bool:
        p = Proc.of(h)
        if p is None:
            return False
        proc = self._children.get((p.pid, p.start))
        if proc is not None:
            # poll() also reaps the zombie and keeps the exit status for exit_detail().
            running = proc.poll() is None
        else:
            stat = read_proc_stat(p.pid)
            running = stat is not None and stat.start == p.start and stat.state not in ("Z", "X")
        if not running:
            self._close_pidfd((p.pid, p.start))
        return running

    def exit_detail(self, h: Handle) -> str:
        p = Proc.of(h)
        proc = self._children.get((p.pid, p.start)) if p is not None else None
        if proc is None:
            # Adopted: not our child, so its exit status went to its real parent.
            return "running" if self.alive(h) else "not running"
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

    async def stop(self, h: Handle, grace: float) -> None:
        # Runs on the agent's event loop: wait by sleeping asynchronously, never block.
        for pause in self._stop_steps(h, grace):
            await asyncio.sleep(pause)

    def stop_sync(self, h: Handle, grace: float) -> None:
        """stop() for callers without an event loop."""
        for pause in self._stop_steps(h, grace):
            time.sleep(pause)

    async def logs(self, h: Handle, follow: bool) -> AsyncIterator[bytes]:
        path = Path(str(h.ref.get("log", "")))
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, held across awaits
        except OSError:
            return
        try:
            while True:
                chunk = f.read(65536)
                if chunk:
                    yield chunk
                elif not follow:
                    return
                else:
                    await asyncio.sleep(FOLLOW_INTERVAL)
        finally:
            f.close()

    def tail(self, h: Handle, lines: int) -> list[str]:
        log = h.ref.get("log")
        if not log:
            return []
        self._settle_log(h)
        return tail(Path(str(log)), lines)

    def _settle_log(self, h: Handle) -> None:
        """A process that has exited may have left lines in its pipes: give its log writer a
        moment to append them and end, so a crash message quotes the app's last words."""
        try:
            writer = int(h.ref["writer"]), int(h.ref["writer_start"])
        except (KeyError, TypeError, ValueError):
            return  # started before the log writer existed
        if self.alive(h):
            return
        deadline = time.monotonic() + LOG_SETTLE
        while time.monotonic() < deadline:
            stat = read_proc_stat(writer[0])
            if stat is None or stat.start != writer[1] or stat.state in ("Z", "X"):
                return
            time.sleep(0.01)

    def _stop_steps(self, h: Handle, grace: float) -> Iterator[float]:
        """The stop sequence; yields how long to pause between checks (the caller sleeps)."""
        p = Proc.of(h)
        if p is None or not self._group_is_ours(p):
            return
        if self.alive(h):
            self._signal_group(p, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.alive(h) and time.monotonic() < deadline:
                yield POLL_INTERVAL
            if self.alive(h):
                self._signal_group(p, signal.SIGKILL)
                deadline = time.monotonic() + KILL_WAIT
                while self.alive(h) and time.monotonic() < deadline:
                    yield POLL_INTERVAL
        # The leader is gone; whatever it forked into its group and that shrugged off
        # SIGTERM goes now, so a stopped color leaves nothing behind.
        if self._group_is_ours(p):
            self._signal_group(p, signal.SIGKILL)

    @staticmethod
    def _group_is_ours(p: Proc) -> bool:
        """May we signal p.pgid without hitting a stranger?"""
        stat = read_proc_stat(p.pid)
        if stat is None:
            # The leader is gone. A process group id stays allocated while the group has
            # members, so a group still answering to this id holds only our leftovers.
            return True
        return stat.start == p.start

    @staticmethod
    def _signal_group(p: Proc, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pgid, sig)


def pidfds_work() -> bool:
    """Can this kernel give us pidfds (os.pidfd_open, Linux >= 5.3)?"""
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return False
    os.close(fd)
    return True


__all__ = [
    "PRIVATE_PORTS_LOW",
    "LocalRuntime",
    "ProcStat",
    "_ephemeral_low",
    "free_port",
    "read_proc_stat",
    "tail",
]
