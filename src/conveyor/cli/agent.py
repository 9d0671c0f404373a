"""`conveyor agent start|stop|status`."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from conveyor.agent.client import AgentUnavailable
from conveyor.cli.common import JsonOpt, agent_app, console, project
from conveyor.cli.output import emit_json, fail

# --- agent ------------------------------------------------------------------------------------


@agent_app.command("start")
def agent_start() -> None:
    """Start the agent in the background (commands start it on demand too).

    Example:

        conveyor agent start
    """
    proj = project()
    proj.config()
    try:
        info = proj.agent().ensure()
    except AgentUnavailable as exc:
        fail(str(exc), 1)
    console.print(f"agent running, pid {info.get('pid')}")


@agent_app.command("stop")
def agent_stop(
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running", help="Leave services and the proxy serving (for an upgrade)."
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Stop the agent; by default also stop every service and the proxy of this project.

    Example:

        conveyor agent stop --keep-running
    """
    proj = project()
    if not keep_running and not yes:
        if not sys.stdin.isatty():
            fail(
                "this stops every service of the project and its proxy: pass --yes (or --keep-running)"
            )
        typer.confirm("Stop every service of this project and the proxy?", abort=True)
    try:
        stopped = proj.agent().stop(keep_running)
    except AgentUnavailable as exc:
        fail(str(exc), 1)
    if not stopped:
        console.print("agent was not running")
        return
    console.print(
        "agent stopped"
        + (": services keep serving" if keep_running else ", services and proxy stopped")
    )


@agent_app.command("status")
def agent_status(json_out: JsonOpt = False) -> None:
    """Show whether the agent runs, its pid and its admin (metrics) address.

    Example:

        conveyor agent status --json
    """
    proj = project()
    client = proj.agent()
    ping = client.ping()
    info = client.info() if ping else None
    data: dict[str, Any] = {"running": ping is not None, **(info or {})}
    if json_out:
        emit_json(data)
    elif ping is None:
        console.print("agent not running")
    else:
        console.print(
            f"agent running, pid {data.get('pid')}, metrics at {data.get('admin')}/metrics"
        )
    raise typer.Exit(0 if ping is not None else 1)
