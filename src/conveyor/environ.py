"""What a process conveyor starts for the app (service, hook, analysis command) inherits.

Only the basics of the agent's environment: whatever the operator who happened to start the
agent had exported (cloud credentials, tokens) is none of the app's business, and a deploy must
not depend on who ran it. The rest comes from conveyor.toml and conveyor itself.
"""

from __future__ import annotations

import os

PASSTHROUGH = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"}
)


def inherited() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in PASSTHROUGH or k.startswith("LC_")}
