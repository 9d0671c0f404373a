"""Migrations delegated to the app's own tool: `[migrations] command = "alembic upgrade head"`.

The command runs through the shell in the release's tree, with the basics of conveyor's
environment (conveyor.environ, as a hook) and DATABASE_URL (and the name given by
database_url_secret), never on its command line. Its output is captured
with the URL and password masked, passed on line by line as progress, and the whole process
group is killed when it outlives `command_timeout`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conveyor.environ import inherited
from conveyor.migrations.database import redact
from conveyor.migrations.runner import MigrationError

_TAIL = 20  # lines of output quoted in an error


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    seconds: float
    output: str  # redacted


class CommandFailed(MigrationError):
    def __init__(self, message: str, result: CommandResult) -> None:
        super().__init__(message)
        self.result = result


def run_command(
    command: str,
    tree: Path,
    url: str,
    timeout: float,
    progress: Callable[[str], None],
    variables: tuple[str, ...] = ("DATABASE_URL",),
) -> CommandResult:
    """Run `command` in `tree`; raises CommandFailed (non-zero exit, timeout) with the tail of
    its output."""
    env = inherited()
    for name in variables:
        env[name] = url
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            command,
            shell=True,
            cwd=tree,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise MigrationError(f"cannot run {command!r} in {tree}: {exc}") from None
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = redact(raw.decode("utf-8", "replace").rstrip("\n"), url)
            lines.append(line)
            progress(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        # The shell and whatever it started: the whole session.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    reader.join(5.0)
    result = CommandResult(command, code, time.monotonic() - started, "\n".join(lines))
    tail = "\n".join(f"  | {line}" for line in lines[-_TAIL:])
    if timed_out:
        raise CommandFailed(
            f"{command!r} did not finish within {timeout:g}s ([migrations] command_timeout): "
            f"killed\n{tail}".rstrip(),
            result,
        )
    if code != 0:
        raise CommandFailed(f"{command!r} exited with code {code}\n{tail}".rstrip(), result)
    return result
