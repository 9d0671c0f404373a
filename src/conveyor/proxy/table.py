"""The route table in shared memory: how a switch reaches busy workers without waiting on them.

The keeper writes the whole table (JSON) into a memfd that every worker maps; a sequence number
around each write (a seqlock: odd while writing) lets a worker copy a consistent table. A worker
compares the sequence number with the one it applied when it dispatches a request (one read of
shared memory), and rereads the table when it moved. So a switch is done when the keeper has
written it: every request dispatched after that, on any worker, sees it, however busy the worker
is or however long the scheduler keeps it off a core.

What cannot go through shared memory still goes over the keeper's channel to each worker: a
listening socket (a new route, a new address), and a route's removal (its listener is closed).
The keeper writes the table after those are acknowledged, so the table in shared memory never
names a route a worker cannot serve yet.
"""

from __future__ import annotations

import json
import mmap
import os
from typing import Any

HEADER = 16  # sequence number, length of the JSON (two native 64-bit integers)
SIZE = 4 * 1024 * 1024  # the memfd's size: pages are only used when written


class SharedTable:
    """One mapping of the memfd: the keeper's (publish) or a worker's (read)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.map = mmap.mmap(fd, SIZE)
        self.words = memoryview(self.map).cast("Q")  # [0] sequence, [1] length

    @classmethod
    def create(cls) -> SharedTable:
        fd = os.memfd_create("conveyor-routes")  # close-on-exec: passed to each worker by name
        os.ftruncate(fd, SIZE)
        return cls(fd)

    @property
    def sequence(self) -> int:
        return int(self.words[0])

    def publish(self, routes: dict[str, dict[str, Any]]) -> bool:
        """Write the table; False (nothing written) when it does not fit."""
        data = json.dumps(routes).encode()
        if HEADER + len(data) > SIZE:
            return False
        words = self.words
        seq = int(words[0])
        words[0] = seq + 1  # odd: being written
        self.map[HEADER : HEADER + len(data)] = data
        words[1] = len(data)
        words[0] = seq + 2
        return True

    def read(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """A consistent copy of the table and its sequence number."""
        words = self.words
        while True:
            seq = int(words[0])
            if seq & 1:
                continue  # the keeper is writing: a few microseconds
            size = int(words[1])
            data = self.map[HEADER : HEADER + size]
            if int(words[0]) == seq:
                return seq, json.loads(data) if size else {}
