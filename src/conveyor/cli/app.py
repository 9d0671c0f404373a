"""The `conveyor` command line, all commands registered (conveyor.cli.main is the entry point).

One module per command group; importing them registers their commands on the shared app.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

# Imported in the order `conveyor --help` lists the commands.
# isort: off
from conveyor.cli import releases, deploy, gates, show, manifest, locks, audit, agent, doctor, db  # noqa: F401 - they register commands
from conveyor.cli import migrate  # noqa: F401 - registers its commands
from conveyor.cli import secrets  # noqa: F401 - registers `conveyor secrets`
from conveyor.cli import access  # noqa: F401 - registers `conveyor tokens` and `conveyor access`
from conveyor.cli import render  # noqa: F401 - registers `conveyor render`
from conveyor.cli import migrations_lint  # noqa: F401 - registers `migrations`
from conveyor.cli import serve  # noqa: F401 - registers `conveyor serve`
from conveyor.cli import proxy  # noqa: F401 - registers `conveyor proxy`

# isort: on
from conveyor.cli.common import Command, app
from conveyor.cli.output import emit_json, fail, set_json_mode

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


SHELLS = ("bash", "zsh", "fish")


@app.command(cls=Command)
def completion(
    shell: Annotated[str, typer.Argument(metavar="SHELL", help="bash, zsh or fish.")],
) -> None:
    """Print the shell completion script for conveyor.

    Example:

        conveyor completion bash > ~/.local/share/bash-completion/completions/conveyor
    """
    if shell not in SHELLS:
        fail(f"unknown shell {shell!r}: use bash, zsh or fish")
    # Private to typer, but the only way to its completion scripts without `--install-completion`
    # on every command line; typer's own `--show-completion` uses the same function.
    from typer._completion_shared import get_completion_script

    print(
        get_completion_script(prog_name="conveyor", complete_var="_CONVEYOR_COMPLETE", shell=shell)
    )


def run() -> None:
    try:
        _run()
    except Exception as exc:
        from conveyor.cli.store_errors import is_store_error, report

        if not is_store_error(exc):
            raise
        sys.exit(report(exc))


def _run() -> None:
    if "_CONVEYOR_COMPLETE" in os.environ:
        # The scripts above call conveyor back with _CONVEYOR_COMPLETE set: typer answers then,
        # with the completion classes this registers (private to typer, as above).
        from typer._completion_classes import completion_init

        completion_init()
    if "--json" not in sys.argv[1:]:
        app()
        return
    # Usage errors (a missing --env, a bad --limit) are found before any command runs: with
    # --json they come out as the same JSON object as every other failure.
    set_json_mode(True)
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        code = 130
    except Exception as exc:
        usage = getattr(exc, "exit_code", None)
        if not isinstance(usage, int) or not hasattr(exc, "format_message"):
            raise  # a store error too: run() prints it as JSON
        emit_json({"error": exc.format_message(), "exit": usage})
        code = usage
    sys.exit(code if isinstance(code, int) else 0)
