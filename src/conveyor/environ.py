"""What a process conveyor starts for the app (service, hook, analysis command) inherits.

Only the basics of the agent's environment: whatever the operator who happened to start the
agent had exported (cloud credentials, tokens) is none of the app's business, and a deploy must
not depend on who ran it. The rest comes from conveyor.toml and conveyor itself.

PATH is passed as it is, with nothing prepended: the app's `python3` is the one of the
environment conveyor was run from (its virtualenv, if one was active), never conveyor's own.
Hooks that need conveyor itself find it in CONVEYOR_BIN.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PASSTHROUGH = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"}
)


def inherited() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in PASSTHROUGH or k.startswith("LC_")}


def conveyor_bin() -> str:
    """How a hook runs this very conveyor: its script beside the interpreter, or `python -m`."""
    script = Path(sys.executable).parent / "conveyor"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{sys.executable} -m conveyor"
