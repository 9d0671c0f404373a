"""Who is acting: the name recorded in the audit log, on a lock, on an approval.

`CONVEYOR_USER` first (CI jobs and shared accounts set it), else the git user of the project
(`git config user.name`: what a developer already told their tools), else the login name of the
operating system. There are no passwords here: this names a person, it does not prove who they
are (the HTTP API does, with tokens: docs/access.md).

A command finds its user with `current_user()`. The agent acts for whoever sent the request: it
sets `acting` for the length of that request, and what it writes names `actor()`.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "CONVEYOR_USER"
MAX_LENGTH = 200

# The user a request in the agent acts for; None outside a request (the agent's own doings).
acting: ContextVar[str | None] = ContextVar("conveyor_acting", default=None)
# Who the agent's own decisions are recorded as (an automatic rollback, a stale lock freed).
AGENT = "conveyor-agent"


class IdentityError(ValueError):
    """A user name that cannot be recorded as it is (empty, control characters, too long)."""


@dataclass(frozen=True)
class Identity:
    name: str
    source: str  # "CONVEYOR_USER", "git" or "os": how it was found, for messages


def check_name(name: str, where: str) -> str:
    """`name` without surrounding blanks; IdentityError naming `where` when it cannot be used."""
    name = name.strip()
    if not name:
        raise IdentityError(f"{where} is empty: set it to a user name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        # A newline in a name would forge a second line in every log and listing it appears in.
        raise IdentityError(f"{where} holds a control character: use a plain user name")
    if len(name) > MAX_LENGTH:
        raise IdentityError(f"{where} is longer than {MAX_LENGTH} characters")
    return name


def _git_user(cwd: Path | None) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "config", "user.name"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):  # no git here: the next source answers
        return None
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (some containers)
        return f"uid {os.getuid()}"


def whoami(cwd: Path | None = None) -> Identity:
    """The user running this process; `cwd` is where git looks for a project's own user.name."""
    explicit = os.environ.get(ENV_VAR)
    if explicit is not None:
        return Identity(check_name(explicit, ENV_VAR), ENV_VAR)
    git = _git_user(cwd)
    if git is not None:
        return Identity(check_name(git, "git config user.name"), "git")
    return Identity(check_name(_os_user(), "the login name"), "os")


def current_user(cwd: Path | None = None) -> str:
    return whoami(cwd).name


def actor() -> str:
    """Who the current action is for: the request's user in the agent, else this process's."""
    return acting.get() or current_user()
