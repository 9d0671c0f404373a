"""Markers: every process conveyor starts for an app carries, in its environment, whose it is.

As containers carry labels, each color's process gets `CONVEYOR_PROJECT_ID` (this project's
home, hashed), `CONVEYOR_APP`, `CONVEYOR_ENV`, `CONVEYOR_SERVICE`, `CONVEYOR_COLOR`,
`CONVEYOR_VERSION` and `CONVEYOR_INSTANCE_ID` (one per start), and so do the processes it forks.
That finds them without the state database: an agent that starts on an empty or older database
tells the processes it knows from the ones nobody does (orphans), and `conveyor agent stop`
stops them all.

The scan reads `/proc/<pid>/environ` of the user's own processes (others' cannot be read) and
names each process by pid plus kernel start time, read before and after, so a pid reused in
between is never taken for ours. Stdlib only: the CLI uses it too.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from conveyor.procs import read_proc_stat

PROJECT_ID = "CONVEYOR_PROJECT_ID"
INSTANCE_ID = "CONVEYOR_INSTANCE_ID"
# The marker's fields and the variables that carry them (app ... version are also what the app
# itself reads: see Fleet.service_env).
FIELDS = {
    "app": "CONVEYOR_APP",
    "environment": "CONVEYOR_ENV",
    "service": "CONVEYOR_SERVICE",
    "color": "CONVEYOR_COLOR",
    "version": "CONVEYOR_VERSION",
    "instance": INSTANCE_ID,
}


def project_id(home: Path) -> str:
    """The project's mark: its conveyor home (one agent each), hashed so that no path shows."""
    return hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]


def for_start(project: str) -> dict[str, str]:
    """The variables a new workload gets beside CONVEYOR_APP/ENV/SERVICE/COLOR/VERSION."""
    return {PROJECT_ID: project, INSTANCE_ID: uuid.uuid4().hex[:12]}


@dataclass(frozen=True)
class Marked:
    """One running process group of the project: what its marker says, its leader, its size."""

    pgid: int
    leader_start: int  # 0: the leader is gone, its group lives on
    pids: tuple[int, ...]
    app: str
    environment: str
    service: str
    color: str
    version: str
    instance: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.environment}/{self.service} {self.version} ({self.color}), "
            f"process group {self.pgid}"
        )


def _environ(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:  # gone, a kernel thread, or not ours to read
        return None
    found: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key.startswith(b"CONVEYOR_"):
            found[key.decode(errors="replace")] = value.decode(errors="replace")
    return found


def scan(project: str, proc: Path = Path("/proc")) -> list[Marked]:
    """The project's process groups that run now, by process group id."""
    uid = os.getuid()
    groups: dict[int, dict[str, Any]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if entry.stat().st_uid != uid:
                continue
        except OSError:
            continue
        before = read_proc_stat(pid)
        env = _environ(pid) if before is not None else None
        if env is None or env.get(PROJECT_ID) != project:
            continue
        after = read_proc_stat(pid)
        if before is None or after is None or after.start != before.start:
            continue  # the pid changed hands while we read it
        if after.state in ("Z", "X"):
            continue
        group = groups.setdefault(after.pgrp, {"pids": [], "leader_start": 0, "env": env})
        group["pids"].append(pid)
        if pid == after.pgrp:
            group["leader_start"] = after.start
            group["env"] = env  # the leader's marker speaks for the group
    return [
        Marked(
            pgid=pgid,
            leader_start=g["leader_start"],
            pids=tuple(sorted(g["pids"])),
            **{field: g["env"].get(var, "") for field, var in FIELDS.items()},
        )
        for pgid, g in sorted(groups.items())
    ]


def unknown(found: Iterable[Marked], known: Iterable[Mapping[str, Any]]) -> list[Marked]:
    """The groups that none of the `known` handle refs (local runtime: pid, pgid, proc_start)
    names: a group is known by its id, and by its leader's start time while the leader runs."""
    names: set[tuple[int, int]] = set()
    for ref in known:
        try:
            pgid = int(ref.get("pgid", ref["pid"]))
            names.add((pgid, int(ref.get("proc_start", 0))))
        except (KeyError, TypeError, ValueError):
            continue
    known_groups = {pgid for pgid, _ in names}
    return [
        m
        for m in found
        if not (
            (m.pgid, m.leader_start) in names or (m.leader_start == 0 and m.pgid in known_groups)
        )
    ]


async def stop(project: str, groups: Iterable[Marked], grace: float) -> list[Marked]:
    """Stop these groups as the local runtime stops a color (SIGTERM to the group, `grace`,
    SIGKILL), those of them that a fresh scan still finds marked as this project's."""
    import asyncio

    from conveyor.runtimes.base import Handle
    from conveyor.runtimes.local import LocalRuntime

    wanted = {(m.pgid, m.leader_start) for m in groups}
    still = [m for m in scan(project) if (m.pgid, m.leader_start) in wanted]
    runtime = LocalRuntime(Path(os.devnull))
    handles = [
        Handle("local", {"pid": m.pgid, "pgid": m.pgid, "proc_start": m.leader_start}, (), 0.0)
        for m in still
    ]
    await asyncio.gather(*(runtime.stop(h, grace) for h in handles))
    return still
