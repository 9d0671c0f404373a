"""The agent's own backups of the state database: one every `[agent] backup_every` (a day by
default), the newest `backup_keep` (7) kept, in `.conveyor/backups/daily-<UTC time>.db`.

Copies taken by hand (`conveyor db backup`) are named `state-...` and never removed here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

PREFIX = "daily-"


def directory(home: Path) -> Path:
    return home / "backups"


def taken(folder: Path) -> list[Path]:
    """The agent's backups, oldest first (their names sort by time)."""
    try:
        found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and p.is_file()]
    except OSError:
        return []
    return sorted(p for p in found if not p.name.endswith(".part"))


def due(folder: Path, every: float, now: float | None = None) -> bool:
    """Whether the newest backup is `every` seconds old (or there is none); never when 0."""
    if every <= 0:
        return False
    existing = taken(folder)
    if not existing:
        return True
    try:
        newest = existing[-1].stat().st_mtime
    except OSError:
        return True
    return (time.time() if now is None else now) - newest >= every


def next_path(folder: Path, suffix: str, at: datetime | None = None) -> Path:
    stamp = (at or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return folder / f"{PREFIX}{stamp}{suffix}"


def prune(folder: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` of the agent's backups; returns what was removed."""
    existing = taken(folder)
    gone = existing[: max(0, len(existing) - keep)]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone
