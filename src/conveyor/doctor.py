"""What `conveyor doctor` finds: processes of the project that the state database does not know
(orphans, found by their markers), colors it records that do not run, and a database that fails
or was lost. Shared by the agent (which also knows the colors it is starting) and the CLI (when
no agent runs)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from conveyor import markers
from conveyor.procs import read_proc_stat
from conveyor.store.db import InstanceRecord

# How long an orphan gets between SIGTERM and SIGKILL (no configuration says more about it).
STOP_GRACE = 10.0


def _runs(ref: Mapping[str, Any]) -> bool:
    try:
        pid, start = int(ref["pid"]), int(ref["proc_start"])
    except (KeyError, TypeError, ValueError):
        return False
    stat = read_proc_stat(pid)
    return stat is not None and stat.start == start and stat.state not in ("Z", "X")


def examine(
    project: str,
    database: str,
    rows: list[InstanceRecord] | None,
    problem: str | None,
    starting: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The report. `rows` None: the database could not be read (`problem` says why); then no
    process can be called an orphan for sure, and none is listed as one."""
    found = markers.scan(project)
    refs = [dict(row.handle.get("ref") or {}) for row in rows or []]
    orphans = markers.unknown(found, [*refs, *starting]) if rows is not None else []
    missing = [
        {
            "environment": row.environment,
            "service": row.service,
            "color": row.color,
            "version": row.version,
            "role": row.role,
        }
        for row, ref in zip(rows or [], refs, strict=True)
        if not _runs(ref)
    ]
    return {
        "ok": problem is None and not orphans and not missing,
        "database": {"url": database, "ok": problem is None, "problem": problem},
        "running": [m.to_json() for m in found],
        "orphans": [m.to_json() for m in orphans],
        "missing": missing,
    }


async def check(
    project: str,
    database: str,
    rows: list[InstanceRecord] | None,
    problem: str | None,
    starting: Iterable[Mapping[str, Any]] = (),
    stop: Iterable[int] = (),
) -> dict[str, Any]:
    """examine(); with `stop` (process group ids the user confirmed), those of them that are
    still orphans are stopped first, and the report after says so (`stopped`)."""
    starting = list(starting)
    report = examine(project, database, rows, problem, starting)
    chosen = set(stop)
    if not chosen:
        return report
    targets = [
        markers.Marked(**{**m, "pids": tuple(m["pids"])})
        for m in report["orphans"]
        if m["pgid"] in chosen
    ]
    stopped = await markers.stop(project, targets, STOP_GRACE)
    after = examine(project, database, rows, problem, starting)
    return {**after, "stopped": [m.to_json() for m in stopped]}
