"""The agent's record of its runs, in `.conveyor/agent.json`: when it started, when it was last
seen, how it ended, and what it found when it came back.

The running agent writes the file once it serves, touches it on every supervisor pass (its mtime
is "last seen"), and on a clean stop adds `stopped_at`. A file without `stopped_at` and no agent
answering means the agent was not seen to stop: it crashed or was killed. Stdlib only: the CLI
reads this on its quick paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

FILE = "agent.json"


def record_path(home: Path) -> Path:
    return home / FILE


def read(home: Path) -> dict[str, Any] | None:
    """The last agent's record, with `last_seen` (the file's mtime), or None."""
    path = record_path(home)
    try:
        data = json.loads(path.read_text())
        seen = path.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {**data, "last_seen": seen}


def how_it_ended(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """How the run in `record` ended, assuming no agent runs it any more:
    {"pid", "started_at", "ended": "stopped" | "crashed", "at"} (at: the stop, or last seen)."""
    if record is None:
        return None
    stopped = record.get("stopped_at")
    return {
        "pid": record.get("pid"),
        "started_at": record.get("started_at"),
        "ended": "stopped" if stopped else "crashed",
        "at": stopped if stopped else record.get("last_seen"),
    }


def write(home: Path, data: dict[str, Any]) -> None:
    """Replace the record at once (a reader never sees half a file)."""
    path = record_path(home)
    part = path.with_suffix(".json.part")
    part.write_text(json.dumps(data))
    os.replace(part, path)


def touch(home: Path) -> None:
    """Mark the running agent as seen now."""
    with contextlib.suppress(OSError):  # removed by hand: the next write puts it back
        os.utime(record_path(home))


def clock(at: float | None) -> str:
    """A moment as the operator's local time of day, with the date when it is not today."""
    if not at:
        return "?"
    moment = time.localtime(at)
    if time.strftime("%Y-%m-%d", moment) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", moment)
    return time.strftime("%Y-%m-%d %H:%M:%S", moment)


def ending_text(ended: dict[str, Any] | None) -> str:
    """'stopped at 21:22:49' or 'last seen 21:22:49' (not seen to stop: a crash)."""
    if ended is None:
        return "never ran here before"
    if ended["ended"] == "stopped":
        return f"stopped at {clock(ended['at'])}"
    return f"last seen {clock(ended['at'])}"


def started_text(facts: dict[str, Any]) -> str:
    """The one line a command prints when it had to start the agent: why, and what the agent
    found and did about the deployments the previous one left in progress."""
    line = f"the agent was not running ({ending_text(facts.get('previous'))}); started it"
    ends = []
    for item in facts.get("interrupted", []):
        ends.append(f"deployment #{item['deployment']} was interrupted and {item['result']}")
    return line + (" — " + "; ".join(ends) if ends else "")
