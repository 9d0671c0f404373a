"""Deployment hooks: one shell command per hook, its output in the deployment's log.

A hook runs under `/bin/sh -c` as the leader of a new session (so of its own process group):
stopping it, on timeout or when the rollout is cancelled, signals the whole group, which takes
down whatever the command forked as well. The hook is over when its shell exits; anything it
left running in its group is terminated then, so a hook can never leave strays behind (a
command that really wants a daemon detaches it with `setsid`).

Output is read from a pipe asynchronously so a chatty hook never blocks the event loop, and
it is streamed: every line goes to the log file as it arrives and only the last few are kept
in memory, whatever the volume. The environment is passed through as given and never logged:
it holds the service's secrets, and every known secret value in the output is replaced with
`[secret:NAME]` before a line is written or kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from conveyor.config.models import HookConfig
from conveyor.procs import read_proc_stat
from conveyor.secrets.redact import Redactor

# Lines kept for the result (shown in `conveyor status` and notifications).
TAIL_LINES = 20
READ_CHUNK = 65536
# A "line" longer than this is cut: output without newlines must not grow a buffer forever.
MAX_LINE = 65536
# Between SIGTERM and SIGKILL for the hook's process group.
TERM_GRACE = 2.0
# After SIGKILL the pipe closes as soon as the kernel has torn the processes down; this only
# bounds the wait for a process that escaped the group but still holds the pipe open.
KILL_WAIT = 5.0
# Once the shell has exited, how long its background processes may keep the pipe open before
# they are treated as strays and terminated.
EXIT_GRACE = 1.0
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class HookResult:
    name: str
    ok: bool
    exit_code: int | None  # None when the shell did not exit by itself (signal, timeout, no start)
    output: list[str]  # the last TAIL_LINES lines of stdout+stderr
    duration: float  # seconds
    detail: str  # "exited with code 0", "exited with code 3", "timed out after 60s", ...


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _OutputSink:
    """Splits the hook's byte stream into lines, appends them to the log, keeps the tail."""

    def __init__(self, name: str, log: BinaryIO, redactor: Redactor | None = None) -> None:
        self._redactor = redactor or Redactor()
        self._prefix = f"[{name}] ".encode()
        self._log = log
        self._partial = b""
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def feed(self, data: bytes) -> None:
        pieces = (self._partial + data).split(b"\n")
        self._partial = pieces.pop()
        while len(self._partial) > MAX_LINE:
            pieces.append(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]
        self._emit(pieces)

    def finish(self) -> None:
        if self._partial:
            self._emit([self._partial])
            self._partial = b""
        self._log.flush()

    def tail(self) -> list[str]:
        return list(self._tail)

    def _emit(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._redactor:
            # Lines are whole here (or MAX_LINE pieces): a value split across two pieces of
            # one over-long line is the one case left out.
            lines = [self._redactor.raw(line) for line in lines]
        # One write per chunk rather than per line: 100k lines must not mean 100k syscalls.
        self._log.write(b"".join(self._prefix + line + b"\n" for line in lines))
        # Only the lines that can end up in the tail are worth decoding.
        self._tail.extend(_decode(lines[-TAIL_LINES:]))


def _decode(lines: Iterable[bytes]) -> list[str]:
    return [line.decode("utf-8", "replace").removesuffix("\r") for line in lines]


async def _pump(stream: asyncio.StreamReader, sink: _OutputSink) -> None:
    while True:
        data = await stream.read(READ_CHUNK)
        if not data:
            return
        sink.feed(data)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in the process group `pgid`."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = read_proc_stat(int(entry))
        if stat is not None and stat.pgrp == pgid and stat.state != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_INTERVAL)
    return True


async def _wait_exit(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    """Whether the shell exited within `timeout`.

    Not `proc.wait()`: asyncio only completes that once the output pipe is closed too, and a
    background process the shell started can hold the pipe open long after the shell is gone.
    The return code is set as soon as the child is reaped, under asyncio and uvloop alike.
    """
    deadline = time.monotonic() + timeout
    while proc.returncode is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(POLL_INTERVAL, remaining))
    return True


async def _terminate_group(proc: asyncio.subprocess.Process, pgid: int) -> None:
    """SIGTERM the group, give it TERM_GRACE, then SIGKILL what is left; reaps the shell."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE
    # The shell is reaped first: until its parent (us) has waited for it, it is a zombie that
    # keeps the group from looking empty.
    await _wait_exit(proc, TERM_GRACE)
    if proc.returncode is None or not await _wait_group_gone(pgid, deadline - time.monotonic()):
        _signal_group(pgid, signal.SIGKILL)
        await _wait_exit(proc, KILL_WAIT)


async def _finish_reading(reader: asyncio.Task[None], timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), timeout)
    if not reader.done():
        reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader


async def run_hook(
    name: str,
    hook: HookConfig,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    redactor: Redactor | None = None,
) -> HookResult:
    """Run `hook.command`; never raises for the command's failures (they are in the result)."""
    started = time.monotonic()

    def result(ok: bool, exit_code: int | None, detail: str, output: list[str]) -> HookResult:
        return HookResult(name, ok, exit_code, output, time.monotonic() - started, detail)

    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - closed in the finally below
    except OSError as e:
        return result(False, None, f"cannot write log {log_path}: {e.strerror or e}", [])
    try:
        # Shielded: the shell runs as soon as the spawn starts, but asyncio connects its pipes
        # after that; a cancellation there would kill the shell alone and leave what it already
        # started running (seen: a hook's background child outliving an aborted rollout).
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                hook.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                limit=READ_CHUNK,
            )
        )
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            await _kill_when_spawned(spawn)
            raise
        except (OSError, ValueError) as e:
            # OSError: missing cwd, /bin/sh not executable...; ValueError: NUL bytes in the
            # command or the environment. The message never includes the environment.
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if isinstance(e, ValueError):
                reason = "command or environment contains a NUL byte"
            return result(False, None, f"could not start: {reason}", [])
        ok, code, detail, output = await _supervise(name, hook, proc, log, redactor)
        return result(ok, code, detail, output)
    finally:
        log.close()


async def _kill_when_spawned(spawn: asyncio.Future[asyncio.subprocess.Process]) -> None:
    """Kill the group of a hook whose start was cancelled, once the start has finished."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait([spawn], timeout=KILL_WAIT)
    if not spawn.done():
        # Still connecting after KILL_WAIT (or cancelled again): kill it whenever it finishes.
        spawn.add_done_callback(_kill_spawned)
        return
    if _kill_spawned(spawn):
        with contextlib.suppress(asyncio.CancelledError):
            await _wait_exit(spawn.result(), KILL_WAIT)


def _kill_spawned(spawn: asyncio.Future[asyncio.subprocess.Process]) -> bool:
    if spawn.cancelled() or spawn.exception() is not None:
        return False
    # start_new_session: the shell's pid is its group's id.
    _signal_group(spawn.result().pid, signal.SIGKILL)
    return True


async def _supervise(
    name: str,
    hook: HookConfig,
    proc: asyncio.subprocess.Process,
    log: BinaryIO,
    redactor: Redactor | None = None,
) -> tuple[bool, int | None, str, list[str]]:
    """Wait for the hook within its timeout; returns (ok, exit code, detail, output tail)."""
    # start_new_session makes the shell a session and group leader: its pid is the pgid.
    pgid = proc.pid
    assert proc.stdout is not None
    sink = _OutputSink(name, log, redactor)
    reader = asyncio.create_task(_pump(proc.stdout, sink))
    timed_out = False
    settled = False
    try:
        if not await _wait_exit(proc, hook.timeout):
            timed_out = True
            await _terminate_group(proc, pgid)
            await _finish_reading(reader, KILL_WAIT)
        else:
            # Background processes the shell left behind may still be writing to the pipe.
            await _finish_reading(reader, EXIT_GRACE)
            if _group_alive(pgid):
                await _terminate_group(proc, pgid)
        settled = True
    finally:
        # Not settled only when we are cancelled (the rollout was aborted): the hook must not
        # outlive it. While any member is left the pgid cannot be reused, so this is safe.
        if not settled:
            if proc.returncode is None or _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
            # Bounded, and only so the subprocess transport is finished on this loop rather
            # than garbage-collected after it is closed.
            await _wait_exit(proc, KILL_WAIT)
            await _finish_reading(reader, KILL_WAIT)
        if not reader.done():
            reader.cancel()
        sink.finish()
    output = sink.tail()
    code = proc.returncode
    if timed_out:
        return False, None, f"timed out after {_format_seconds(hook.timeout)}", output
    if code is None:
        return False, None, "did not exit after SIGKILL", output
    if code < 0:
        return False, None, f"killed by {_signal_name(-code)}", output
    return code == 0, code, f"exited with code {code}", output
