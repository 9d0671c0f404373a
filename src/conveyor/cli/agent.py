"""`conveyor agent start|stop|status|install`."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from conveyor.agent import runs
from conveyor.cli.common import JsonOpt, agent_app, project, ready_agent
from conveyor.cli.output import console, emit_json, fail

# --- agent ------------------------------------------------------------------------------------


@agent_app.command("start")
def agent_start() -> None:
    """Start the agent in the background (commands start it on demand too).

    Example:

        conveyor agent start
    """
    proj = project()
    client = ready_agent(proj, None)
    info = client.started or client.ping() or {}
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
    from conveyor.agent.client import AgentUnavailable

    try:
        stopped = proj.agent().stop(keep_running)
    except AgentUnavailable as exc:
        fail(str(exc), 1)
    if not stopped:
        line = "agent was not running"
        if not keep_running:
            gone = _stop_marked(proj.paths.home)
            if gone:
                line += f"; stopped {len(gone)} process group(s) of this project that still ran"
            if _stop_proxy(proj.paths.proxy_socket):
                line += "; stopped its proxy"
        console.print(line, markup=False)
        return
    console.print(
        "agent stopped"
        + (": services keep serving" if keep_running else ", services and proxy stopped")
    )


def _stop_marked(home: Path) -> list[Any]:
    """With no agent: every process of the project, found by its marker (conveyor.markers)."""
    import asyncio

    from conveyor import markers

    project_id = markers.project_id(home)
    return asyncio.run(markers.stop(project_id, markers.scan(project_id), 10.0))


def _stop_proxy(control: Path) -> bool:
    """With no agent: the project's proxy, if one answers on its control socket."""
    import asyncio

    from conveyor.routers.base import RouterError
    from conveyor.routers.builtin import ProxyClient

    try:
        asyncio.run(ProxyClient(control, timeout=5.0).shutdown())
    except (RouterError, OSError):
        return False
    return True


@agent_app.command("status")
def agent_status(json_out: JsonOpt = False) -> None:
    """Show whether the agent runs, since when, its pid and admin (metrics) address, and how
    its last run ended: a clean stop, or not seen to stop (a crash). Exit 1 when it is not running.

    Example:

        conveyor agent status --json
    """
    proj = project()
    client = proj.agent()
    ping = client.ping()
    if ping is not None:
        last_run = ping.get("previous")
        data: dict[str, Any] = {"running": True, **ping, "last_run": last_run}
    else:
        # Nobody answers: the record on disk is of the last run, whichever way it ended.
        last_run = runs.how_it_ended(client.info())
        data = {"running": False, "last_run": last_run}
    if json_out:
        emit_json(data)
    elif ping is None:
        console.print(f"agent not running; last run: {_ended(last_run)}", markup=False)
    else:
        since = data.get("started_at") or 0.0
        console.print(
            f"agent running since {runs.clock(since)} ({_ago(time.time() - since)}), "
            f"pid {data.get('pid')}, metrics at {data.get('admin')}/metrics",
            markup=False,
            soft_wrap=True,
        )
        console.print(f"previous run: {_ended(last_run)}", markup=False)
        orphans = data.get("orphans") or []
        if orphans:
            console.print(
                f"warning: {len(orphans)} process group(s) of this project ran unknown to the "
                "state database when the agent started: `conveyor doctor` lists them, "
                "`conveyor doctor --fix` stops them",
                markup=False,
                soft_wrap=True,
            )
        if data.get("store_lost"):
            console.print(f"warning: {data['store_lost']}", markup=False, soft_wrap=True)
    raise typer.Exit(0 if ping is not None else 1)


def _ended(run: dict[str, Any] | None) -> str:
    if run is None:
        return "none recorded"
    if run.get("ended") == "stopped":
        return f"a clean stop at {runs.clock(run.get('at'))}"
    return f"not seen to stop (a crash), last seen {runs.clock(run.get('at'))}"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


@agent_app.command("install")
def agent_install(
    user_unit: Annotated[
        bool,
        typer.Option("--user", help="A user unit (systemctl --user), no root needed."),
    ] = False,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the unit instead of writing it.")
    ] = False,
) -> None:
    """Write a systemd unit that keeps this project's agent running on a server: restarted
    whenever it ends, as the current user, in the project directory. Stopping or restarting
    the unit leaves the apps serving (like `agent stop --keep-running`).

    Example:

        conveyor agent install --user && systemctl --user enable --now conveyor-shop.service
    """
    import getpass

    from conveyor.agent import systemd

    proj = project()
    cfg = proj.config()
    app = cfg.app.name
    text = systemd.unit_text(
        app=app,
        project_dir=proj.dir,
        python=sys.executable,
        user=None if user_unit else getpass.getuser(),
        path_env=os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        conveyor_home=os.environ.get("CONVEYOR_HOME"),
    )
    if print_only:
        sys.stdout.write(text)
        return
    try:
        target = systemd.install(text, app, user_unit, Path.home())
    except OSError as exc:
        fail(str(exc), 1)
    console.print(f"wrote {target}", markup=False)
    console.print(f"next: {systemd.next_steps(app, user_unit)}", markup=False)
