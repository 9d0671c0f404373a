"""`conveyor doctor`: processes of the project that nothing tracks, and a state database out of
step with what runs; `--fix` stops the orphans."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from conveyor.cli.common import JsonOpt, Project, app, project
from conveyor.cli.output import console, emit_json, fail


@app.command()
def doctor(
    fix: Annotated[
        bool, typer.Option("--fix", help="Stop the orphans (asks first, unless --yes).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Check that the state database and what runs agree: processes of this project that the
    database does not know (orphans, found by the markers in their environment), colors it
    records that do not run, and a database that fails or was lost. Exit 1 when something is
    wrong (after --fix: when something is still wrong).

    Example:

        conveyor doctor --fix --yes
    """
    proj = project()
    report = _examine(proj, None)
    orphans = report["orphans"]
    if fix and orphans:
        if not yes:
            if not sys.stdin.isatty():
                fail(f"this stops {len(orphans)} process group(s) that nothing tracks: pass --yes")
            _show(report)
            typer.confirm(f"Stop these {len(orphans)} orphaned process group(s)?", abort=True)
        report = _examine(proj, [m["pgid"] for m in orphans])
    if json_out:
        emit_json(report)
    else:
        _show(report)
    raise typer.Exit(0 if report["ok"] else 1)


def _examine(proj: Project, stop: list[int] | None) -> dict[str, Any]:
    """The report from the running agent (it also knows the colors it is starting), or worked out
    here when none runs; `stop`: the orphans (process group ids) to stop first."""
    client = proj.agent()
    if client.ping() is not None:
        from conveyor.agent.client import AgentUnavailable

        try:
            result = client.request({"op": "doctor", "stop": stop or []}, timeout=120)
        except AgentUnavailable as exc:
            fail(f"cannot reach the conveyor agent: {exc}; see {proj.paths.agent_log}", 1)
        if not result.get("ok"):
            fail(str(result.get("error")), int(result.get("exit", 1)))
        return {"agent": True, **result["data"]}
    return {"agent": False, **_local(proj, stop or [])}


def _local(proj: Project, stop: list[int]) -> dict[str, Any]:
    import asyncio

    from conveyor import markers
    from conveyor.doctor import check
    from conveyor.store.db import Store, StoreError, database_url, redacted_url

    app_name = proj.config().app.name
    url = database_url(proj.paths.home)
    rows, problem, where = None, None, redacted_url(url)
    try:
        store = Store.open(url)
    except StoreError as exc:
        problem = str(exc)
    else:
        where = store.where
        try:
            rows = store.instances(app_name)
        except StoreError as exc:
            problem = str(exc)
        finally:
            store.close()
    project_id = markers.project_id(proj.paths.home)
    return asyncio.run(check(project_id, where, rows, problem, stop=stop))


def _show(report: dict[str, Any]) -> None:
    db = report["database"]
    agent = "running" if report.get("agent") else "not running"
    console.print(f"agent: {agent}", markup=False)
    if db["ok"]:
        console.print(f"state database: {db['url']}: ok", markup=False, soft_wrap=True)
    else:
        console.print(f"state database: {db['problem']}", markup=False, soft_wrap=True)
    for m in report.get("stopped", []):
        console.print(f"stopped: {_group(m)}", markup=False)
    for m in report["orphans"]:
        console.print(
            f"orphan: {_group(m)} — no state records it; `conveyor doctor --fix` stops it",
            markup=False,
            soft_wrap=True,
        )
    for row in report["missing"]:
        console.print(
            f"not running: {row['environment']}/{row['service']} {row['version']} "
            f"({row['color']}, {row['role']}) is recorded but does not run",
            markup=False,
            soft_wrap=True,
        )
    if report["ok"]:
        console.print(f"ok: {len(report['running'])} process group(s) running, all known")


def _group(m: dict[str, Any]) -> str:
    pids = ", ".join(str(p) for p in m["pids"])
    return (
        f"{m['environment']}/{m['service']} {m['version']} ({m['color']}), "
        f"process group {m['pgid']} (pids {pids})"
    )
