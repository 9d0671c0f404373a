"""Reading the log of a local process: the records its log writer appends (runtimes/logshim.py).

Lines that are not records (a log written before the log writer existed) read as they are, with
no time and no stream.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

# A joined line stops growing here (bytes of text): an app printing without newlines cannot make
# a reader hold its whole output.
JOIN_LIMIT = 1024 * 1024

_RECORD = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (stdout|stderr|conveyor) ([PF]) (.*)", re.DOTALL
)


@dataclass(frozen=True)
class LogLine:
    text: str
    time: str | None = None  # RFC 3339, UTC
    stream: str | None = None  # stdout, stderr, conveyor (the runtime's own lines)
    partial: bool = False  # a piece of a line longer than the log writer's limit


def parse(raw: str) -> LogLine:
    """One line of the file (without its newline)."""
    match = _RECORD.fullmatch(raw)
    if match is None:
        return LogLine(raw)
    time, stream, tag, text = match.groups()
    return LogLine(text, time, stream, tag == "P")


class Joiner:
    """Puts the pieces of long lines back together, per stream (the two streams' records may
    interleave). Feed lines as they are read; what is held waits for the next feed, so a
    follower keeps one Joiner per file."""

    def __init__(self) -> None:
        self._held: dict[str | None, LogLine] = {}

    def feed(self, lines: Iterable[LogLine]) -> Iterator[LogLine]:
        for line in lines:
            held = self._held.pop(line.stream, None)
            if held is not None:
                line = replace(line, text=held.text + line.text, time=held.time)
            if line.partial and len(line.text) < JOIN_LIMIT:
                self._held[line.stream] = line
            else:
                yield line

    def rest(self) -> Iterator[LogLine]:
        """What is still held (a long line whose end is not written yet), as it is."""
        held, self._held = self._held, {}
        yield from held.values()


def read(lines: Iterable[str]) -> list[LogLine]:
    """Lines of a file, parsed and joined; a line still in pieces at the end comes last."""
    joiner = Joiner()
    result = list(joiner.feed(parse(raw) for raw in lines))
    return result + list(joiner.rest())


def tail_raw(log_path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a file, reading backwards from the end in blocks."""
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
    # Split at newlines alone: an app's line may hold a carriage return or a form feed.
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    if pos > 0:
        parts = parts[1:]  # the first one is cut somewhere in the middle
    return [part.decode("utf-8", "replace") for part in parts[-lines:]]


def tail_lines(log_path: Path, lines: int) -> list[LogLine]:
    """The last `lines` lines of a log (the pieces of a long line count as one)."""
    wanted = lines
    while lines > 0:
        raw = tail_raw(log_path, wanted)
        joined = read(raw)
        # Pieces make fewer lines than records: read further back, unless this is all there is.
        if len(joined) >= lines or len(raw) < wanted:
            return joined[-lines:]
        wanted *= 2
    return []


def tail(log_path: Path, lines: int = 20) -> list[str]:
    """The text of the last `lines` lines of a log: what the app wrote, without times."""
    return [line.text for line in tail_lines(log_path, lines)]
