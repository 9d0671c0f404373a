"""The `command` check: run a shell command in the release tree and judge its outcome.

Without `field`, exit code 0 passes and anything else fails; with `field`, stdout is JSON and
the number at that dotted path is judged against min/max. The command runs in its own process
group so that a timeout kills everything it started, not just the shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import TYPE_CHECKING

from conveyor.core.analysis import Measurement, Verdict, judge
from conveyor.environ import inherited
from conveyor.metrics.base import (
    MissingPlaceholder,
    Target,
    json_field,
    placeholder_env,
    seconds,
    short,
    substitute,
)

if TYPE_CHECKING:
    from conveyor.config.models import AnalysisCheck

MAX_OUTPUT = 1024 * 1024


async def run_command(
    command: str, cwd: str, env: dict[str, str], timeout: float
) -> tuple[int | None, bytes, bytes]:
    """(exit code or None on timeout, stdout, stderr), each output capped at MAX_OUTPUT."""
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    reads = asyncio.gather(_drain(proc.stdout), _drain(proc.stderr))
    try:
        out, err = await asyncio.wait_for(reads, timeout)
        code: int | None = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        code, out, err = None, b"", b""
    finally:
        # The whole group: helpers the command started go too, and a finished command's
        # leftovers cannot keep writing into pipes nobody reads.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        reads.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await proc.wait()
    return code, out, err


async def _drain(stream: asyncio.StreamReader) -> bytes:
    """Everything up to EOF, keeping the first MAX_OUTPUT bytes (the rest is read and dropped
    so a chatty command never blocks on a full pipe)."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk[: MAX_OUTPUT - len(kept)]
    return bytes(kept)


class CommandSource:
    async def measure(self, check: AnalysisCheck, target: Target, now: float) -> Measurement:
        name = check.display()
        if check.command is None:
            raise ValueError(f"check {name} has no command")
        try:
            command = substitute(check.command, target)
        except MissingPlaceholder as exc:
            return Measurement(name, Verdict.INCONCLUSIVE, None, str(exc), now)
        env = {**inherited(), **placeholder_env(target)}
        try:
            code, out, err = await run_command(command, str(target.cwd), env, check.timeout)
        except OSError as exc:
            # The cwd is gone or /bin/sh cannot start: nothing was measured.
            return Measurement(name, Verdict.INCONCLUSIVE, None, f"cannot run: {exc}", now)
        if code is None:
            return Measurement(
                name, Verdict.FAIL, None, f"timed out after {seconds(check.timeout)}", now
            )
        if code != 0:
            return Measurement(name, Verdict.FAIL, None, _failed(code, out, err), now)
        if check.field is None:
            return Measurement(name, Verdict.PASS, None, "exit code 0", now)
        try:
            document = json.loads(out)
        except ValueError:
            return judge(check, None, None, "stdout is not JSON", now)
        value, why = json_field(document, check.field)
        return judge(check, value, None, why, now)


def _failed(code: int, out: bytes, err: bytes) -> str:
    detail = f"exit code {code}"
    if code < 0:
        with contextlib.suppress(ValueError):
            detail = f"killed by {signal.Signals(-code).name}"
    # The last line the command wrote says most about why it failed.
    lines = (err or out).decode(errors="replace").strip().splitlines()
    return f"{detail}: {short(lines[-1])}" if lines else detail
