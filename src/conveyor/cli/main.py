"""The `conveyor` command line.

Exit codes: 0 done; 1 the deployment did not go live, was rolled back, or was refused; 2 usage,
configuration or input error (and then nothing was changed).

The entry point imports nothing it does not need: `conveyor --version` answers before typer
loads, and every command imports its heavy parts (configuration, database, rich) when it runs.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from conveyor import __version__

        print(f"conveyor {__version__}")
        return
    from conveyor.cli.app import run

    run()
