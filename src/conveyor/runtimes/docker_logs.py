"""A container's output, copied into conveyor's log file for its color, as processes' output is.

`conveyor logs` reads `<logs>/<env>/<service>/<color>.log`, records written by the local runtime's
log writer (runtimes/logshim.py): time, stream, F/P, line. For a container or a Swarm service,
two threads (stdout, stderr) follow its logs through the Docker API, with Docker's timestamps,
and append the same records. They end when the container (or service) goes. A restarted agent
starts them again from the last record's time, so what was written meanwhile is not lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from conveyor.runtimes import logshim
from conveyor.runtimes.docker_common import parse_time
from conveyor.runtimes.logfile import tail_lines
from conveyor.secrets.redact import Redactor

log = logging.getLogger(__name__)

# (stream name, since: seconds since the epoch or None) -> Docker's log chunks, with timestamps.
Source = Callable[[str, float | None], Iterable[bytes]]


def last_time(path: Path) -> float | None:
    """The time of the last record in the file (seconds since the epoch), if any."""
    lines = tail_lines(path, 1)
    return parse_time(lines[-1].time) if lines and lines[-1].time else None


def header(path: Path, text: str) -> None:
    """A line of conveyor's own ("--- start web blue v1 ---") in the log."""
    _append(path, logshim.record("conveyor", text.encode()))


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def records(stream: str, lines: Iterable[bytes]) -> Iterable[bytes]:
    """Docker's timestamped lines ("2026-12-06T01:52:04.123456789Z text") as records."""
    for line in lines:
        stamp, _, text = line.partition(b" ")
        # A line longer than Docker's 16 KiB buffer arrives in pieces; it is kept whole here.
        yield b"%s %s F %s\n" % (stamp, stream.encode(), text)


def _lines(chunks: Iterable[bytes]) -> Iterable[bytes]:
    held = b""
    for chunk in chunks:
        held += chunk
        *whole, held = held.split(b"\n")
        yield from whole
    if held:
        yield held


def follow(
    path: Path,
    source: Source,
    name: str,
    since: float | None,
    redactor: Redactor | None = None,
) -> None:
    """Copy stdout and stderr of one workload into `path`, in two daemon threads: all of it
    (since None: a new workload), or what it wrote since then (adopted: the file's last time).
    Every line goes through `redactor` first: a secret the app prints never reaches the file."""
    redact = redactor.raw if redactor else None

    def copy(stream: str) -> None:
        try:
            lines = _lines(source(stream, since))
            if redact is not None:
                lines = (redact(line) for line in lines)
            for rec in records(stream, lines):
                _append(path, rec)
        except Exception as exc:
            log.debug("stopped copying %s of %s: %s", stream, name, exc)

    for stream in ("stdout", "stderr"):
        with contextlib.suppress(RuntimeError):  # interpreter shutting down
            threading.Thread(
                target=copy, args=(stream,), name=f"logs-{name}-{stream}", daemon=True
            ).start()
