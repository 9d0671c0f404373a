"""`conveyor manifest` and `conveyor schema`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from conveyor.cli.common import Command, EnvOpt, JsonOpt, app, project
from conveyor.cli.output import console, emit_json, fail

SCHEMAS = ("config", "manifest")


@app.command(cls=Command)
def manifest(env: EnvOpt = "dev", json_out: JsonOpt = False) -> None:
    """Show the deployment manifest of an environment: the live version, each service's URL,
    commit, status and color, and the infrastructure (runtime, router, conveyor's version,
    when the configuration changed).

    Example:

        conveyor manifest --env production --json
    """
    from conveyor.cli.show import _ask
    from conveyor.manifest import build

    proj = project()
    cfg = proj.checked(env)
    status = _ask({"op": "status", "env": env}, proj)
    store = proj.store()
    try:
        found = build(cfg, proj.config_path, store, env, status)
    finally:
        store.close()
    data = found.model_dump(mode="json")
    if json_out:
        emit_json(data)
        return
    from rich.table import Table

    deployed = [s.version for s in found.services.values() if s.version]
    version = found.version or ("mixed versions" if deployed else "nothing deployed")
    where = f" (deployment #{found.deployment})" if found.deployment else ""
    console.print(f"{found.app} / {env}: {version}{where}", markup=False)
    table = Table("service", "version", "color", "status", "commit", "url", box=None)
    for name, svc in found.services.items():
        table.add_row(
            name,
            svc.version or "-",
            svc.color or "-",
            svc.status,
            (svc.commit or "-")[:12],
            svc.url or "-",
        )
    console.print(table)
    infra = found.infrastructure
    changed = infra.config_changed_at.isoformat() if infra.config_changed_at else "-"
    console.print(
        f"runtime {infra.runtime.kind} {infra.runtime.version}, router {infra.router.kind} "
        f"{infra.router.version}, conveyor {infra.conveyor_version}; conveyor.toml changed "
        f"{changed}",
        markup=False,
    )


@app.command(cls=Command)
def schema(
    what: Annotated[str, typer.Argument(metavar="WHAT", help="config or manifest.")],
) -> None:
    """Print the JSON Schema of conveyor.toml (config) or of `conveyor manifest --json`
    (manifest), for editors and tools. docs/promotion.md shows how to use it with taplo/tombi.

    Example:

        conveyor schema config > conveyor.schema.json
    """
    from conveyor.schemas import config_schema, manifest_schema

    if what not in SCHEMAS:
        fail(f"unknown schema {what!r}: use config or manifest")
    print(json.dumps(config_schema() if what == "config" else manifest_schema(), indent=2))
