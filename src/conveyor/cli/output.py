"""How commands talk to people and to machines.

On a terminal: rich, with a spinner on the step in progress. Piped: plain timestamped lines.
With `--json`: nothing but one JSON object on stdout at the end. Errors always go to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.status import Status

stderr = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class Progress:
    """Receives the agent's progress events for one long-running command."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.console = Console(highlight=False)
        self.tty = self.console.is_terminal and not json_mode
        self._status: Status | None = None
        self._t0 = time.monotonic()

    def __enter__(self) -> Progress:
        if self.tty:
            self._status = self.console.status("contacting the agent…")
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        if self.json_mode:
            return
        message = str(event.get("message", event.get("step", "")))
        elapsed = time.monotonic() - self._t0
        if self.tty:
            assert self._status is not None
            self.console.print(f"[dim]{elapsed:6.2f}s[/] {message}", markup=True)
            self._status.update(message)
        else:
            print(f"[{elapsed:6.2f}s] {message}", flush=True)
