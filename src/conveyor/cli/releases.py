"""`conveyor init`, `conveyor release create`, `conveyor releases`."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from conveyor.cli.common import (
    JsonOpt,
    app,
    console,
    project,
    release_app,
    release_json,
    size_text,
    when,
)
from conveyor.cli.output import emit_json, fail
from conveyor.releases import ReleaseError, ReleaseStore

# --- init -------------------------------------------------------------------------------------


@app.command()
def init(
    name: Annotated[
        str | None, typer.Option(help="App name (default: the directory name).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing conveyor.toml.")
    ] = False,
) -> None:
    """Write a commented conveyor.toml for the app in this directory.

    Example:

        cd myapp && conveyor init
    """
    from conveyor.config.template import default_app_name, detect, render_template

    here = Path(os.environ.get("CONVEYOR_PROJECT", ".")).resolve()
    target = here / "conveyor.toml"
    if target.exists() and not force:
        fail(f"{target} already exists (use --force to overwrite it)")
    command, port, health = detect(here)
    app_name = name or default_app_name(here)
    text = render_template(app_name, command, port, health)
    target.write_text(text)
    console.print(f"wrote {target}: app {app_name!r}, web service `{command}` on port {port}")
    console.print("next: conveyor release create --version v1 && conveyor deploy v1 --env dev")


# --- releases ---------------------------------------------------------------------------------


@release_app.command("create")
def release_create(
    version: Annotated[
        str | None, typer.Option("--version", help="Version name (default: commit or time).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Snapshot the app's source into an immutable, content-addressed release.

    Example:

        conveyor release create --version v2
    """
    proj = project()
    cfg = proj.config()
    store = proj.store()
    try:
        rec = ReleaseStore(proj.paths.home, store, cfg.app.name).create(
            proj.dir, version, datetime.now(UTC)
        )
    except ReleaseError as exc:
        fail(str(exc))
    finally:
        store.close()
    data = release_json(rec)
    if json_out:
        emit_json(data)
    else:
        commit = f" commit {rec.commit[:12]}" if rec.commit else ""
        console.print(f"release {rec.version}: {rec.digest[:19]}…{commit} ({size_text(rec.size)})")


@app.command()
def releases(json_out: JsonOpt = False) -> None:
    """List releases, newest first.

    Example:

        conveyor releases --json
    """
    proj = project()
    cfg = proj.config()
    store = proj.store()
    try:
        recs = store.list_releases(cfg.app.name)
    finally:
        store.close()
    if json_out:
        emit_json([release_json(r) for r in recs])
        return
    table = Table("version", "digest", "commit", "created", box=None)
    for r in recs:
        table.add_row(r.version, r.digest[:19], (r.commit or "")[:12], when(r.created_at))
    console.print(table)
