"""The `conveyor` command line.

Exit codes: 0 done; 1 the deployment did not go live, was rolled back, or was refused; 2 usage,
configuration or input error (and then nothing was changed).

One module per command group; importing them registers their commands on the shared app.
"""

from __future__ import annotations

from typing import Annotated

import typer

# Imported in the order `conveyor --help` lists the commands.
# isort: off
from conveyor.cli import releases, deploy, show, agent  # noqa: F401 - they register commands

# isort: on
from conveyor.cli.common import app

# --- demo -------------------------------------------------------------------------------------


@app.command()
def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the scratch directory afterwards.")
    ] = False,
) -> None:
    """Run conveyor's main job end to end in a scratch directory: deploy v1, switch to v2 under
    live traffic, refuse a v3 that never gets healthy, roll back, and print a summary.

    Example:

        conveyor demo
    """
    from conveyor.demo import run_demo

    raise typer.Exit(run_demo(keep=keep))


def main() -> None:
    app()
