"""The providers that need nothing but this machine: the agent's environment, a dotenv file,
a command. (`local` is conveyor.secrets.local; aws and vault are their own modules.)

None of these has versions: each answers with what it holds now, as version "current", and
ignores a version asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from pathlib import Path

from conveyor.core.dotenv import DotenvError, parse
from conveyor.secrets.base import ProviderUnavailable, SecretValue

CURRENT = "current"
# How much of a failed command's stderr is quoted (its last line, cut to this length).
STDERR_QUOTE = 200


class EnvProvider:
    """`env`: the agent's own environment variables, by the secret's name.

    Listing it is the explicit choice to let secrets come from whoever started the agent: the
    services themselves still never inherit that environment (conveyor.environ).
    """

    name = "env"

    async def get(self, name: str, version: str | None = None) -> SecretValue | None:
        value = os.environ.get(name)
        if value is None:
            return None
        return SecretValue(name, value, CURRENT, self.name)


class DotenvProvider:
    """`dotenv`: a file of NAME=value lines (conveyor.core.dotenv), read at each lookup."""

    name = "dotenv"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def get(self, name: str, version: str | None = None) -> SecretValue | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProviderUnavailable(f"{self.path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProviderUnavailable(f"cannot read {self.path}: {exc}") from None
        try:
            entries = parse(text)
        except DotenvError as exc:
            raise ProviderUnavailable(f"{self.path}: {exc}") from None
        found = [e.value for e in entries if e.name == name]
        if not found:
            return None
        return SecretValue(name, found[-1], CURRENT, self.name)


class CommandProvider:
    """`command`: a program that prints the value, e.g. `op read op://shop/{name}/password`.

    Run without a shell, its words split once and the placeholders substituted in each: a value
    never appears on a command line (the name does). Its stdout, less one trailing newline, is
    the value; empty output: it has no such name. A non-zero exit or a timeout is
    ProviderUnavailable quoting the end of its stderr; the whole process group is killed on
    timeout, so a helper it started does not linger.
    """

    name = "command"

    def __init__(self, template: str, app: str, environment: str, timeout: float) -> None:
        self.template = template
        self.app = app
        self.environment = environment
        self.timeout = timeout

    def argv(self, name: str) -> list[str]:
        fields = {"name": name, "environment": self.environment, "app": self.app}
        words = shlex.split(self.template)
        for key, value in fields.items():
            words = [w.replace("{" + key + "}", value) for w in words]
        return words

    async def get(self, name: str, version: str | None = None) -> SecretValue | None:
        argv = self.argv(name)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProviderUnavailable(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            _kill(proc.pid)
            await proc.wait()
            raise ProviderUnavailable(
                f"{argv[0]} timed out after {self.timeout:g}s (killed)"
            ) from None
        except asyncio.CancelledError:
            _kill(proc.pid)
            raise
        if proc.returncode != 0:
            raise ProviderUnavailable(
                f"{argv[0]} exited with code {proc.returncode}: {quote_stderr(err)}"
            )
        value = out.decode("utf-8", errors="replace")
        value = value.removesuffix("\n").removesuffix("\r")
        if not value:
            return None
        return SecretValue(name, value, CURRENT, self.name)


def _kill(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def quote_stderr(err: bytes) -> str:
    """The last non-empty line of a failed command's stderr, cut short and without control
    characters: enough to say why, not a dump of whatever it printed."""
    lines = [line.strip() for line in err.decode("utf-8", errors="replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    if not last:
        return "(no output on stderr)"
    last = "".join(ch if ch.isprintable() else "?" for ch in last)
    return last if len(last) <= STDERR_QUOTE else last[: STDERR_QUOTE - 1] + "…"
