"""A state database that fails reaches the user as one line, never as a traceback.

`conveyor.store` raises `StoreError` with a message that names the database and says what to
do. The command prints that line (exit 1) and the traceback goes to the project's agent.log,
where the agent writes its own. The check never imports the store: a command that did not
load it cannot have failed on it.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import typer


def is_store_error(exc: BaseException) -> bool:
    db = sys.modules.get("conveyor.store.db")
    return db is not None and isinstance(exc, db.StoreError)


def report(exc: BaseException) -> int:
    """Log the traceback to agent.log, print the one line; returns the exit code (1)."""
    from conveyor.cli.output import fail

    _log(exc)
    try:
        fail(str(exc), 1)
    except typer.Exit as done:
        return done.exit_code
    return 1  # pragma: no cover - fail() always raises


def _log(exc: BaseException) -> None:
    log = _agent_log()
    if log is None:
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    text = "".join(traceback.format_exception(exc))
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{stamp} conveyor.cli ERROR `conveyor {' '.join(sys.argv[1:])}`: {text}")
    except OSError:
        pass  # the one line on stderr is what matters


def _agent_log() -> Path | None:
    """agent.log of the project this command runs in (found as `project()` finds it)."""
    from conveyor.paths import Paths

    start = Path(os.environ.get("CONVEYOR_PROJECT", ".")).resolve()
    directory = start if start.is_dir() else start.parent
    for candidate in (directory, *directory.parents):
        if (candidate / "conveyor.toml").is_file():
            return Paths.for_project(candidate).agent_log
    return None
