"""`conveyor init`, `conveyor release create`, `conveyor releases`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from conveyor.cli.common import (
    JsonOpt,
    app,
    project,
    release_app,
    release_json,
    size_text,
    when,
)
from conveyor.cli.output import console, emit_json, fail, stderr

if TYPE_CHECKING:
    from conveyor.config import Config
    from conveyor.store.db import ReleaseRecord
    from conveyor.store.images import ReleaseImage

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
    guess = detect(here, os.environ)
    app_name = name or default_app_name(here)
    note = (
        ""
        if guess.recognised
        else (
            "conveyor init did not recognise this app: replace this placeholder with the command\n"
            "that starts it ({port} in it becomes the port to listen on)."
        )
    )
    target.write_text(render_template(app_name, guess.command, guess.port, guess.health, note))
    if guess.recognised:
        console.print(
            f"wrote {target}: app {app_name!r}, web service `{guess.command}` on port "
            f"{guess.port}, health check {guess.health}",
            soft_wrap=True,
            markup=False,
        )
    else:
        console.print(f"wrote {target}: app {app_name!r}", markup=False)
        console.print(
            "conveyor init did not recognise the app here: edit `services.web.command` in "
            "conveyor.toml (its placeholder only fails the deploy with that reminder)",
            markup=False,
        )
    for line in guess.notes:
        console.print(f"note: {line}", markup=False)
    if _ignore_state_dir(here):
        console.print("added .conveyor/ to .gitignore (conveyor's state: releases, logs)")
    console.print("next: conveyor release create --version v1 && conveyor deploy v1 --env dev")


def _ignore_state_dir(here: Path) -> bool:
    """Add `.conveyor/` to the project's .gitignore, in a git work tree; whether it was added."""
    gitignore = here / ".gitignore"
    if not gitignore.exists():
        inside = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if inside.returncode != 0:
            return False
    text = gitignore.read_text(encoding="utf-8") if gitignore.exists() else ""
    if any(
        line.strip() in (".conveyor", ".conveyor/", "/.conveyor", "/.conveyor/")
        for line in text.splitlines()
    ):
        return False
    separator = "" if not text or text.endswith("\n") else "\n"
    gitignore.write_text(f"{text}{separator}.conveyor/\n", encoding="utf-8")
    return True


# --- releases ---------------------------------------------------------------------------------


@release_app.command("create")
def release_create(
    version: Annotated[
        str | None, typer.Option("--version", help="Version name (default: commit or time).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Snapshot the app's source into an immutable, content-addressed release.

    With [runtime] kind = "docker" or "swarm", services with `image` get their image with the
    release: built from the snapshot (`build`) and tagged <image>:<version>, or resolved here;
    its id is recorded (build output goes to stderr).

    Example:

        conveyor release create --version v2
    """
    from conveyor.images import ImageError
    from conveyor.releases import ReleaseError, ReleaseStore
    from conveyor.store.images import record as record_images

    proj = project()
    cfg = proj.config()
    store = proj.store()
    made: list[ReleaseImage] = []
    try:
        new = ReleaseStore(proj.paths.home, store, cfg.app.name).create(
            proj.dir, version, datetime.now(UTC), _images_of(cfg, made)
        )
        if made:
            record_images(store, cfg.app.name, new.record.version, made)
    except (ReleaseError, ImageError) as exc:
        fail(str(exc))
    finally:
        store.close()
    rec = new.record
    warnings = []
    if new.uncommitted:
        changes = ", ".join(f"{path} ({kind})" for path, kind in new.uncommitted)
        warnings.append(
            f"uncommitted changes are not in the release (it is commit {(rec.commit or '')[:12]}): "
            f"{changes}"
        )
    if new.same_content_as:
        warnings.append(
            f"same content as {', '.join(new.same_content_as)}: nothing changed since "
            + ("then" if len(new.same_content_as) == 1 else "those")
        )
    if json_out:
        emit_json(
            {
                **release_json(rec),
                "left_out": list(new.left_out),
                "uncommitted": [{"path": p, "change": k} for p, k in new.uncommitted],
                "same_content_as": list(new.same_content_as),
                "tags": list(new.tags),
                "images": images_json(made),
                "warnings": warnings,
            }
        )
        return
    commit = f" commit {rec.commit[:12]}" if rec.commit else ""
    if new.tags:
        commit += f" (tagged {', '.join(new.tags)})"
    console.print(f"release {rec.version}: {rec.digest[:19]}…{commit} ({size_text(rec.size)})")
    for img in made:
        how = "built" if img.built else "resolved"
        console.print(f"image of {img.service}: {img.image} ({how}) {img.image_id}", markup=False)
    if new.left_out:
        console.print(
            f"left out: {', '.join(new.left_out)} (secrets are never released without git; "
            "a .conveyorignore file decides for the rest, e.g. `!.env.example`)",
            markup=False,
            soft_wrap=True,
        )
    from rich.text import Text

    for warning in warnings:
        stderr.print(Text.assemble(("warning:", "bold yellow"), " ", warning), soft_wrap=True)


def _images_of(cfg: Config, made: list[ReleaseImage]) -> Callable[[ReleaseRecord, Path], None]:
    """The release's image step: builds into `made`, streaming the build output to stderr."""

    def prepare(rec: ReleaseRecord, tree: Path) -> None:
        from conveyor.images import release_images

        def progress(line: str) -> None:
            stderr.print(line, markup=False, highlight=False, soft_wrap=True)

        made.extend(release_images(cfg, rec.version, rec.digest, tree, progress))

    return prepare


def images_json(images: list[ReleaseImage]) -> dict[str, dict[str, Any]]:
    return {i.service: {"image": i.image, "id": i.image_id, "built": i.built} for i in images}


@app.command()
def releases(json_out: JsonOpt = False) -> None:
    """List releases, newest first.

    Example:

        conveyor releases --json
    """
    from conveyor.store.images import of_app as images_of_app

    proj = project()
    cfg = proj.config()
    store = proj.store()
    try:
        recs = store.list_releases(cfg.app.name)
        images = images_of_app(store, cfg.app.name)
    finally:
        store.close()
    if json_out:
        emit_json(
            [{**release_json(r), "images": images_json(images.get(r.version, []))} for r in recs]
        )
        return
    from rich.table import Table

    columns = ["version", "digest", "commit", "created"] + (["images"] if images else [])
    table = Table(*columns, box=None)
    for r in recs:
        row = [r.version, r.digest[:19], (r.commit or "")[:12], when(r.created_at)]
        if images:
            shown = (f"{i.service} {i.image_id[:19]}" for i in images.get(r.version, []))
            row.append(", ".join(shown))
        table.add_row(*row)
    console.print(table)
