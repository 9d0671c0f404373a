"""Reading a process's kernel record (/proc/<pid>/stat): state, process group, start time.

A pid alone is reused quickly (pid_max is 32768 here); a pid plus its start time names one process
for good. Used by the local runtime and by hooks, which both start process groups of their own.
"""

from __future__ import annotations

from dataclasses import dataclass


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
