"""`conveyor check run`: a named check's command, run in a release's files.

Its output goes straight to the terminal as it comes (to stderr when stdout is kept for one JSON
object). It gets the same basic environment as the app's processes (conveyor.environ), plus what
the check is about, and never the operator's other exports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from conveyor.core.durations import format_duration
from conveyor.environ import conveyor_bin, inherited

# After SIGTERM, how long a timed-out check's process group gets before SIGKILL.
GRACE = 2.0


@dataclass(frozen=True)
class CheckRun:
    passed: bool
    detail: str  # "exit code 0", "exit code 3", "timed out after 30m", "killed by SIGKILL"
    seconds: float


def run_check(
    name: str, command: str, timeout: float, tree: Path, version: str, quiet_stdout: bool
) -> CheckRun:
    env = {
        **inherited(),
        "CONVEYOR_CHECK": name,
        "CONVEYOR_VERSION": version,
        "CONVEYOR_BIN": conveyor_bin(),
    }
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=tree,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr if quiet_stdout else None,
            start_new_session=True,  # its own group: a timeout stops everything it started
        )
    except OSError as exc:
        return CheckRun(False, f"could not start: {exc}", 0.0)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return CheckRun(False, f"timed out after {format_duration(timeout)}", timeout)
    except KeyboardInterrupt:
        _stop(proc)
        raise
    finally:
        _kill_group(proc.pid, signal.SIGKILL)  # leftovers of a check that ended
    took = time.monotonic() - started
    if code < 0:
        return CheckRun(False, f"killed by {signal.Signals(-code).name}", took)
    return CheckRun(code == 0, f"exit code {code}", took)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=GRACE)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
