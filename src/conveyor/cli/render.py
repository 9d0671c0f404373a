"""`conveyor render`: the Kubernetes objects conveyor would apply, for review or GitOps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from conveyor.cli.common import Command, EnvOpt, JsonOpt, app, project
from conveyor.cli.output import emit_json, fail

COLORS = ("blue", "green")
SECRET_NOTE = (
    "# Secret values are never rendered: conveyor sets them at deploy time. With GitOps, create\n"
    "# this Secret with your secret manager under this name, with these keys: {keys}\n"
)


@app.command(cls=Command)
def render(
    env: EnvOpt = "dev",
    version: Annotated[
        str | None,
        typer.Option("--version", "-v", help="Release version (default: the newest release)."),
    ] = None,
    color: Annotated[
        str, typer.Option("--color", help="The color to render the release as: blue or green.")
    ] = "blue",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write one YAML file per object into this directory."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the Kubernetes manifests conveyor would apply to make a release live in an
    environment, as YAML documents: each service's Deployment and color Service, the Service
    named after it selecting that color, its -preview Service, its Secret (key names only, never
    a value) and, with [router] kind = "gateway-api", its HTTPRoute. Nothing is applied.

    Example:

        conveyor render --env production --version v42 --output k8s/production
    """
    from conveyor.kube.manifests import ManifestError
    from conveyor.kube.manifests import render as build

    if color not in COLORS:
        fail(f"--color must be blue or green (got {color!r})")
    proj = project()
    cfg = proj.config()
    resolved = proj.environment(cfg, env)
    if version is None:
        version = _newest(proj, cfg.app.name)
    # Each service's secret names (values are not read here): `secrets` of [services.NAME].
    secrets = {
        name: list(getattr(svc, "secrets", None) or ()) for name, svc in resolved.services.items()
    }
    try:
        objects = build(resolved, version, color, cfg.router.kind, secrets)
    except ManifestError as exc:
        fail(f"{proj.config_path}: {exc}")
    if json_out:
        emit_json({"environment": env, "version": version, "color": color, "objects": objects})
        return
    docs = [_document(obj) for obj in objects]
    if output is None:
        header = (
            f"# conveyor render --env {env} --version {version} --color {color}\n"
            f"# {len(objects)} objects; conveyor applies them with server-side apply.\n"
        )
        print(header + "".join(f"---\n{doc}" for doc in docs), end="")
        return
    try:
        output.mkdir(parents=True, exist_ok=True)
        for index, (obj, doc) in enumerate(zip(objects, docs, strict=True), 1):
            name = f"{index:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            (output / name).write_text(doc)
    except OSError as exc:
        fail(f"cannot write to {output}: {exc}")
    print(f"wrote {len(objects)} manifests to {output}")


def _document(obj: dict[str, Any]) -> str:
    from conveyor.kube.yaml import dump

    note = ""
    if obj["kind"] == "Secret":
        keys = obj["metadata"].get("annotations", {}).get("conveyor.dev/secret-keys", "")
        note = SECRET_NOTE.format(keys=keys or "(none)")
    return note + dump(obj)


def _newest(proj: Any, app_name: str) -> str:
    store = proj.store()
    try:
        releases = store.list_releases(app_name)
    finally:
        store.close()
    if not releases:
        fail("no release yet: pass --version, or create one with `conveyor release create`")
    return str(max(releases, key=lambda r: r.created_at).version)
