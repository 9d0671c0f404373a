"""How commands talk to people and to machines.

On a terminal: rich, with a spinner on the step in progress. Piped: plain timestamped lines.
With `--json`: nothing but one JSON object on stdout at the end, failures included
(`{"error": ..., "exit": ...}`). Errors always go to stderr otherwise.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status


class LazyConsole:
    """A rich Console made on first use: rich costs more to import than a quick command takes
    (`--version`, `status --json` never print through it)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def print(self, *objects: Any, **options: Any) -> None:
        self.get().print(*objects, **options)


stderr = LazyConsole(stderr=True, highlight=False)
console = LazyConsole(highlight=False)

# Set by every `--json` option (and by main for usage errors): failures come out as JSON too.
_json_mode = False

# Terminal escape sequences (CSI such as colours, OSC such as window titles, and the two-byte
# ones) and the other control characters but tab and newline: apps print them, and quoted in a
# message they would recolour or retitle the user's terminal.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, ended by BEL or ST
    r"|\x1b[P^_X][^\x1b]*(?:\x1b\\)?"  # DCS, PM, APC, SOS
    r"|\x1b[ -/]*[0-~]?"  # the other escape sequences (ESC c, ESC ( B), or a lone ESC
    r"|[\x00-\x08\x0b-\x1f\x7f\x9b]"
)


def clean(text: str) -> str:
    """`text` without terminal escape sequences or control characters (tabs and newlines stay)."""
    return _ESCAPES.sub("", text)


def set_json_mode(on: bool) -> None:
    global _json_mode
    _json_mode = on


def json_mode() -> bool:
    return _json_mode


def fail(message: str, code: int = 2) -> NoReturn:
    if _json_mode:
        emit_json({"error": clean(message), "exit": code})
    else:
        from rich.text import Text

        # A Text, not markup: the message quotes user input and app output ("[...]" included).
        line = Text.assemble(("error:", "bold red"), " ", clean(message))
        stderr.print(line, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# What a command found when it had to start the agent (conveyor.agent.runs): with --json it goes
# into the `agent` field of the object the command prints.
_agent_started: dict[str, Any] | None = None


def agent_started(facts: dict[str, Any]) -> None:
    """Say that this command had to start the agent: one line on stderr, or with --json an
    `agent` field in the object the command prints (see emit_json and take_agent_started)."""
    global _agent_started
    if _json_mode:
        _agent_started = facts
        return
    from conveyor.agent.runs import started_text

    sys.stderr.write(clean(started_text(facts)) + "\n")
    sys.stderr.flush()


def take_agent_started() -> dict[str, Any] | None:
    """The facts agent_started kept for the JSON output, once: for output that is not one
    object (`logs --json`, a stream of lines), which puts them in an object of their own."""
    global _agent_started
    facts, _agent_started = _agent_started, None
    return facts


def emit_json(data: Any) -> None:
    facts = take_agent_started()
    if facts is not None and isinstance(data, dict):
        data = {**data, "agent": facts}
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# Events that say why a deployment ended: its result says the same, so they are printed only when
# the result does not (see Progress.settle).
_CONCLUSIONS = frozenset({"failed", "rolled_back", "aborted"})


class Progress:
    """Receives the agent's progress events for one long-running command."""

    def __init__(self, json_mode: bool) -> None:
        from rich.console import Console

        self.json_mode = json_mode
        self.console = Console(highlight=False)
        self.tty = self.console.is_terminal and not json_mode
        self._status: Status | None = None
        self._t0 = time.monotonic()
        self._held: list[tuple[float, str]] = []
        # The deployment this command started, from its "started" event: what Ctrl-C leaves
        # running in the agent.
        self.deployment: int | None = None

    def __enter__(self) -> Progress:
        if self.tty:
            self._status = self.console.status("contacting the agent…")
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("step") == "started" and isinstance(event.get("deployment"), int):
            self.deployment = event["deployment"]
        if self.json_mode:
            return
        message = clean(str(event.get("message", event.get("step", ""))))
        elapsed = time.monotonic() - self._t0
        self._print_held()
        if event.get("step") in _CONCLUSIONS:
            self._held.append((elapsed, message))
            if self._status is not None:
                self._status.update(message)
            return
        self._print(elapsed, message)

    def settle(self, error: str | None) -> None:
        """The result has come: print the held conclusions that `error` does not repeat."""
        first = clean(error).splitlines()[0] if error else None
        self._held = [(at, message) for at, message in self._held if message != first]
        self._print_held()

    def _print_held(self) -> None:
        for elapsed, message in self._held:
            self._print(elapsed, message)
        self._held = []

    def _print(self, elapsed: float, message: str) -> None:
        if self.tty:
            from rich.text import Text

            assert self._status is not None
            self.console.print(Text.assemble((f"{elapsed:6.2f}s", "dim"), " ", message))
            self._status.update(message)
        else:
            print(f"[{elapsed:6.2f}s] {message}", flush=True)
