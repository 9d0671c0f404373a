"""`conveyor deploy`, `rollback`, `promote`, `abort`: the commands that move traffic."""

from __future__ import annotations

from typing import Annotated

import typer

from conveyor.cli.common import Command, EnvReq, JsonOpt, agent_call, app, finish, project
from conveyor.cli.output import fail
from conveyor.releases import ReleaseError, validate_version


@app.command(cls=Command)
def deploy(
    version: Annotated[
        str,
        typer.Argument(metavar="VERSION", help="A release created with `conveyor release create`."),
    ],
    env: EnvReq,
    json_out: JsonOpt = False,
) -> None:
    """Deploy a release blue/green: start it beside the live one, switch when healthy.

    Returns when the new version is live (exit 0) or has failed (exit 1, the old one keeps serving).

    Example:

        conveyor deploy v2 --env dev
    """
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
    result = agent_call(proj, {"op": "deploy", "env": env, "version": version}, json_out)
    finish(result, json_out, "{version} is live in {environment}")


@app.command()
def rollback(env: EnvReq, json_out: JsonOpt = False) -> None:
    """Go back to the previous version: instantly to the standby color when it still runs,
    otherwise by redeploying the previous successful version blue/green.

    Example:

        conveyor rollback --env dev
    """
    proj = project()
    proj.checked(env)
    result = agent_call(proj, {"op": "rollback", "env": env}, json_out)
    finish(result, json_out, "rolled back {environment} to {version}")


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
    proj = project()
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
    proj = project()
    proj.checked(env)
    result = agent_call(proj, {"op": "abort", "env": env, "reason": reason}, json_out)
    finish(result, json_out, "aborting deployment #{deployment} ({version})")
