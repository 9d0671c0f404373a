"""`conveyor deploy`, `rollback`, `promote`, `abort`: the commands that move traffic."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from conveyor.cli.common import (
    Command,
    EnvReq,
    JsonOpt,
    Project,
    agent_call,
    app,
    finish,
    project,
    remote_mode,
)
from conveyor.cli.output import fail


@app.command(cls=Command)
def deploy(
    version: Annotated[
        str,
        typer.Argument(metavar="VERSION", help="A release created with `conveyor release create`."),
    ],
    env: EnvReq,
    force: Annotated[
        bool,
        typer.Option("--force", help="Redeploy the version that is already live (blue/green)."),
    ] = False,
    override_freeze: Annotated[
        bool,
        typer.Option(
            "--override-freeze", help="Deploy through a freeze window ([access] admins only)."
        ),
    ] = False,
    reason: Annotated[str, typer.Option(help="Why the freeze is overridden (recorded).")] = "",
    wait: Annotated[
        str | None,
        typer.Option(
            "--wait",
            metavar="DURATION",
            help="When the environment is locked, wait up to this long for it (e.g. 5m).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Deploy a release blue/green: start it beside the live one, switch when healthy.

    Returns when the new version is live (exit 0) or has failed (exit 1, the old one keeps serving).
    The environment's gates are checked first (docs/promotion.md): when one is not met, nothing
    starts and each unmet gate is listed with what would meet it (exit 1).
    A locked environment refuses at once, naming who holds it; `--wait 5m` waits for it.

    Example:

        conveyor deploy v2 --env dev --wait 5m
    """
    from conveyor.cli.gates import who
    from conveyor.releases import ReleaseError, validate_version

    if override_freeze and not reason.strip():
        fail('--override-freeze needs --reason "..." (it is recorded)')
    waiting = _wait_seconds(wait)
    if remote_mode():
        request = {"op": "deploy", "env": env, "version": version, "force": force}
        request |= {"override_freeze": override_freeze, "reason": reason}
        finish(agent_call(None, request, json_out), json_out, "{version} is live in {environment}")
    proj = project()
    cfg = proj.checked(env)
    try:
        validate_version(version)
    except ReleaseError as exc:
        fail(str(exc))  # no release can have this name: nothing to suggest creating
    store = proj.store()
    try:
        if store.get_release(cfg.app.name, version) is None:
            fail(
                f"unknown release {version!r}: create it with "
                f"`conveyor release create --version {version}` (see `conveyor releases`)"
            )
    finally:
        store.close()
    request = {
        "op": "deploy",
        "env": env,
        "version": version,
        "force": force,
        "user": who(proj),
        "override_freeze": override_freeze,
        "reason": reason,
    }
    result = agent_call(proj, request, json_out)
    if waiting is not None and result.get("lock"):
        result = _after_the_lock(proj, cfg.app.name, env, request, waiting, result, json_out)
    finish(result, json_out, "{version} is live in {environment}")


def _wait_seconds(wait: str | None) -> float | None:
    if wait is None:
        return None
    from conveyor.core.durations import parse_duration

    try:
        return parse_duration(wait)
    except ValueError as exc:
        fail(f"--wait: {exc}")


def _after_the_lock(
    proj: Project,
    app_name: str,
    env: str,
    request: dict[str, Any],
    seconds: float,
    result: dict[str, Any],
    json_out: bool,
) -> dict[str, Any]:
    """Wait for the environment's lock, then ask again, until the deploy runs or time is up
    (another one may take the lock between our look and our request: then wait again)."""
    import time

    from conveyor.cli.locks import wait_until_free
    from conveyor.core.durations import format_duration

    deadline = time.monotonic() + seconds
    while result.get("lock"):
        if not wait_until_free(proj, app_name, env, deadline):
            error = str(result.get("error") or "")
            return {
                **result,
                "error": f"gave up after waiting {format_duration(seconds)}: {error}",
            }
        result = agent_call(proj, request, json_out)
    return result


@app.command()
def rollback(
    env: EnvReq,
    keep_secrets: Annotated[
        bool,
        typer.Option(
            "--keep-secrets",
            help="Keep the current secret versions (one was rotated because it leaked): the "
            "previous version is redeployed with them instead of getting its own back.",
        ),
    ] = False,
    migrations: Annotated[
        str,
        typer.Option(
            "--migrations",
            metavar="keep|down",
            help="down: once traffic is back, undo the migrations the rolled-back deployment "
            "applied (their Down sections, newest first). keep (default): leave them.",
        ),
    ] = "keep",
    force: Annotated[
        bool,
        typer.Option("--force", help="With --migrations down: run Down sections that drop data."),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="With --migrations down: do not ask first.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Go back to the previous version: instantly to the standby color when it still runs,
    otherwise by redeploying the previous successful version blue/green. The previous
    version gets back the secret versions it ran with, unless --keep-secrets. Migrations stay
    applied (the previous version works with expand migrations) unless --migrations down.

    Example:

        conveyor rollback --env production --migrations down --yes
    """
    if migrations not in ("keep", "down"):
        fail(f"--migrations must be keep or down (got {migrations!r})")
    if force and migrations != "down":
        fail("--force only applies to --migrations down")
    proj = None if remote_mode() else project()
    if proj is not None:
        proj.checked(env)
    if migrations == "down" and not yes:
        if not sys.stdin.isatty():
            fail(f"--migrations down changes the database schema of {env}: pass --yes")
        typer.confirm(f"Roll back {env} and undo its latest migrations?", abort=True)
    request = {
        "op": "rollback",
        "env": env,
        "keep_secrets": keep_secrets,
        "migrations": migrations,
        "force": force,
    }
    result = agent_call(proj, request, json_out)
    finish(result, json_out, "rolled back {environment} from {previous_version} to {version}")


@app.command()
def promote(
    env: EnvReq,
    full: Annotated[
        bool, typer.Option("--full", help="Skip the remaining canary steps: 100% now.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Advance a deployment waiting at a manual gate, a canary step or the bake.

    Example:

        conveyor promote --env production --full
    """
    proj = None if remote_mode() else project()
    if proj is not None:
        proj.checked(env)
    result = agent_call(proj, {"op": "promote", "env": env, "full": full}, json_out)
    finish(result, json_out, "promoted deployment #{deployment} ({version})")


@app.command()
def abort(
    env: EnvReq,
    reason: Annotated[str, typer.Option(help="Why, for the history.")] = "by request",
    json_out: JsonOpt = False,
) -> None:
    """Abort the deployment in progress: all traffic back to the stable version, new one stopped.

    Example:

        conveyor abort --env production --reason "checkout errors"
    """
    proj = None if remote_mode() else project()
    if proj is not None:
        proj.checked(env)
    result = agent_call(proj, {"op": "abort", "env": env, "reason": reason}, json_out)
    finish(result, json_out, "aborting deployment #{deployment} ({version})")


@app.command()
def stop(
    env: EnvReq,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Take an environment down: remove its routes and stop all its services (recorded in the
    history). `conveyor start` brings it back.

    Example:

        conveyor stop --env staging --yes
    """
    proj = project()
    proj.checked(env)
    if not yes:
        if not sys.stdin.isatty():
            fail(f"this stops every service of {env} and its public ports: pass --yes")
        typer.confirm(f"Stop every service of {env} and close its public ports?", abort=True)
    result = agent_call(proj, {"op": "stop_env", "env": env}, json_out)
    finish(result, json_out, "stopped {environment} ({version})")


@app.command()
def start(env: EnvReq, json_out: JsonOpt = False) -> None:
    """Bring a stopped environment back on the version it ran, blue/green like any deploy.

    Example:

        conveyor start --env staging
    """
    proj = project()
    proj.checked(env)
    result = agent_call(proj, {"op": "start_env", "env": env}, json_out)
    finish(result, json_out, "{version} is live in {environment} again")
