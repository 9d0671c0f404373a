"""The log writer of one local process: stamps each line of its stdout and stderr, appends it.

The app is the runtime's own child (its pid and start time stay its handle), but its stdout and
stderr are two pipes whose read ends only this process holds. It runs in a session of its own,
so the app and the log writer both outlive the agent (as a container's shim outlives
containerd). It writes one record per line to the log file, and exits when both pipes are
closed: when the app and whatever it forked have exited.

A record is one line, as the Kubernetes CRI writes container logs:

    2026-11-30T01:52:04.123456789Z stdout F GET / 200

time (UTC, nanoseconds), stream (stdout, stderr; `conveyor` for the runtime's own lines), then
F for a full line or P for a piece of a longer one, then the line as the app wrote it without
its newline. A line longer than LIMIT bytes is cut into P pieces (at a UTF-8 character
boundary) and its last piece is F: readers join them (conveyor.runtimes.logfile). A last line
without a newline is written as F when its stream closes; until then a line is held whole.

Run as a script, with the standard library alone (`python -I -S logshim.py OUT ERR LOG [PATH
[SECRETS]]`, the file descriptors of the two pipes' read ends and of the log opened for
appending; PATH only names the log in `ps`): it starts in a few milliseconds and imports nothing
of conveyor but, when the app has secrets, conveyor/secrets/redact.py (standard library only).

Secrets: the app's secret values reach the writer through SECRETS, the descriptor of a memfd
holding them as JSON ({name: value}), never its argv or environment (which `ps` and /proc show).
Every value is replaced with `[secret:NAME]` before a line is written; a line longer than LIMIT
is cut where no value is cut in two, so a value never reaches the log in pieces.

Killed (kill -9), it can no longer take the app's output: the app's next write to stdout or
stderr fails with EPIPE (or SIGPIPE ends it, for programs that do not ignore it, as Python
does), the supervisor sees a crashed color and restarts it, with a new log writer.
"""

from __future__ import annotations

import os
import selectors
import sys
import time

# Not `from typing import TYPE_CHECKING`: typing alone would double this script's start time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping

    from conveyor.secrets.redact import Redactor

# Longest line written as one record (bytes); as Docker and containerd (16 KiB).
LIMIT = 16 * 1024
STREAMS = ("stdout", "stderr")


def stamp(at_ns: int) -> bytes:
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode() + b".%09dZ" % nanos


def record(stream: str, content: bytes, partial: bool = False, at_ns: int | None = None) -> bytes:
    """One record: `content` must hold no newline."""
    at = time.time_ns() if at_ns is None else at_ns
    return b"%s %s %s %s\n" % (stamp(at), stream.encode(), b"P" if partial else b"F", content)


def _cut(data: bytes) -> int:
    """Where to cut a piece of at most LIMIT bytes: not inside a UTF-8 character."""
    end = LIMIT
    # Continuation bytes are 0b10xxxxxx; a character has at most 3 of them.
    while end > LIMIT - 4 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return end if end > LIMIT - 4 else LIMIT


def split(
    stream: str, data: bytes, at_ns: int, redactor: Redactor | None = None
) -> tuple[bytes, bytes]:
    """The records of the whole lines (and LIMIT-long pieces) in `data`, and what is left.

    With a redactor, known secret values are replaced; a piece of a long line is cut only once
    a value that may begin in it has arrived whole, and never inside one.
    """
    out = []
    clean = redactor.raw if redactor else _same
    hold = redactor.longest if redactor else 0
    while True:
        newline = data.find(b"\n", 0, LIMIT + 1)
        if newline != -1:
            out.append(record(stream, clean(data[:newline]), False, at_ns))
            data = data[newline + 1 :]
        elif len(data) > LIMIT + hold:
            end = _cut(data)
            if redactor:
                end = redactor.safe_cut(data, end)
            out.append(record(stream, clean(data[:end]), True, at_ns))
            data = data[end:]
        else:
            return b"".join(out), data


def _same(data: bytes) -> bytes:
    return data


def write_all(fd: int, data: bytes) -> None:
    """Append `data`; on a write error (disk full) the records are lost, never the app's pipe."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:  # pragma: no cover - Python retries EINTR itself
            continue
        except OSError:
            return


def run(streams: dict[int, str], log_fd: int, redactor: Redactor | None = None) -> None:
    """Copy each pipe in `streams` (fd -> stream name) into records on `log_fd`, until all of
    them are closed; with a redactor, secret values are replaced."""
    held = dict.fromkeys(streams, b"")
    selector = selectors.DefaultSelector()
    for fd in streams:
        selector.register(fd, selectors.EVENT_READ)
    while held:
        for key, _ in selector.select():
            fd = int(key.fd)
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            now = time.time_ns()
            if chunk:
                records, held[fd] = split(streams[fd], held[fd] + chunk, now, redactor)
            else:
                # Closed: the last line, even without its newline, is whole now.
                selector.unregister(fd)
                os.close(fd)
                rest = held.pop(fd)
                if rest and redactor:
                    rest = redactor.raw(rest)
                records = record(streams[fd], rest, False, now) if rest else b""
            if records:
                write_all(log_fd, records)


def start(
    log_fd: int, log_path: str, secrets: Mapping[str, str] | None = None
) -> tuple[int, int, subprocess.Popen[bytes]]:
    """Start the log writer of one process that appends to `log_fd` (the log at `log_path`).

    Returns the write ends of its stdout and stderr pipes, for the app (the caller closes its
    copies once the app has them), and the writer's Popen (the caller reaps it). The writer
    holds the read ends and the log; nobody else does. `secrets` (name -> value) are redacted
    from what it writes; they reach it through an inherited memfd.
    """
    import subprocess

    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    fds = [out_read, err_read]
    argv = [sys.executable, "-I", "-S", __file__, str(out_read), str(err_read), str(log_fd)]
    argv.append(log_path)
    try:
        if secrets:
            fds.append(_secrets_fd(secrets))
            argv.append(str(fds[-1]))
        writer = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(*fds, log_fd),
            start_new_session=True,  # it outlives the agent, as the app does
        )
    except BaseException:
        os.close(out_write)
        os.close(err_write)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return out_write, err_write, writer


def _secrets_fd(secrets: Mapping[str, str]) -> int:
    """An anonymous in-memory file holding the values, read from its start: no path, no pipe
    buffer to fill, gone with the last descriptor."""
    import json

    fd = os.memfd_create("conveyor-secrets", os.MFD_CLOEXEC)
    write_all(fd, json.dumps(dict(secrets)).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_secrets(fd: int) -> Redactor | None:
    """The redactor of the values in the memfd `fd` (closed after)."""
    import json

    with os.fdopen(fd, "rb") as f:
        values = json.loads(f.read() or b"{}")
    if not values:
        return None
    # redact.py is standard library only; this script runs without conveyor on sys.path.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(os.path.dirname(here), "secrets"))
    from redact import Redactor  # type: ignore[import-not-found,unused-ignore]

    return Redactor(values)  # type: ignore[no-any-return,unused-ignore]


def main(argv: list[str]) -> int:
    out_fd, err_fd, log_fd = (int(a) for a in argv[:3])
    redactor = _read_secrets(int(argv[4])) if len(argv) > 4 else None
    run({out_fd: "stdout", err_fd: "stderr"}, log_fd, redactor)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
