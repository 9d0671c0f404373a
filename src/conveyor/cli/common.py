"""What every command shares: the typer apps, the project lookup, talking to the agent."""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from conveyor import __version__
from conveyor.agent.client import AgentClient, AgentUnavailable
from conveyor.cli.output import Progress, emit_json, fail
from conveyor.config import Config, ConfigError, ResolvedEnvironment, find_config, load_config
from conveyor.paths import Paths
from conveyor.store.db import Store, database_url

app = typer.Typer(
    name="conveyor",
    help="Zero-downtime blue/green deployments with health checks, history and instant rollback.\n\n"
    "Example:\n\n    conveyor release create --version v2 && conveyor deploy v2 --env dev",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
release_app = typer.Typer(
    help="Create immutable releases.\n\nExample:\n\n    conveyor release create --version v1",
    no_args_is_help=True,
)
agent_app = typer.Typer(
    help="Manage the background agent that runs rollouts and supervises services.\n\n"
    "Example:\n\n    conveyor agent status",
    no_args_is_help=True,
)
app.add_typer(release_app, name="release")
app.add_typer(agent_app, name="agent")

console = Console(highlight=False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object for machines.")]
EnvOpt = Annotated[str, typer.Option("--env", "-e", help="Environment name, e.g. dev, staging.")]
EnvReq = Annotated[str, typer.Option("--env", "-e", help="Environment to act on (required).")]


class Project:
    """The conveyor.toml this command acts on, and where its state lives."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.dir = config_path.parent
        self.paths = Paths.for_project(self.dir)

    def config(self) -> Config:
        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            fail(str(exc))

    def environment(self, cfg: Config, env: str) -> ResolvedEnvironment:
        try:
            return cfg.environment(env)
        except ConfigError as exc:
            fail(str(exc))

    def store(self) -> Store:
        self.paths.ensure()
        return Store.open(database_url(self.paths.home))

    def agent(self) -> AgentClient:
        return AgentClient(self.dir, self.paths)


def project() -> Project:
    start = Path(os.environ.get("CONVEYOR_PROJECT", ".")).resolve()
    try:
        return Project(find_config(start))
    except ConfigError as exc:
        fail(f"{exc}\n(run `conveyor init` to create one)")


def _version_callback(value: bool) -> None:
    if value:
        print(f"conveyor {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
    project_dir: Annotated[
        Path | None,
        typer.Option(
            "--project", "-C", help="Directory of conveyor.toml (default: search upwards)."
        ),
    ] = None,
) -> None:
    if project_dir is not None:
        os.environ["CONVEYOR_PROJECT"] = str(project_dir)


def release_json(rec: Any) -> dict[str, Any]:
    data = asdict(rec)
    data["created_at"] = rec.created_at.isoformat()
    return data


def size_text(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def when(at: datetime | None) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def agent_call(proj: Project, request: dict[str, Any], json_out: bool) -> dict[str, Any]:
    client = proj.agent()
    with Progress(json_out) as progress:
        try:
            client.ensure()
            return client.request(request, on_progress=progress)
        except AgentUnavailable as exc:
            fail(f"cannot reach the conveyor agent: {exc}; see {proj.paths.agent_log}", 1)


def finish(result: dict[str, Any], json_out: bool, done: str) -> None:
    code = int(result.get("exit", 1))
    data = result.get("data") or {}
    if json_out:
        emit_json({"exit": code, "error": result.get("error"), **data})
    elif code == 0:
        switch = data.get("switch_ms") or {}
        took = ", ".join(f"{k} switched in {v:g} ms" for k, v in switch.items())
        console.print(f"[green]✓[/] {done.format(**data)}" + (f" ({took})" if took else ""))
    else:
        fail(str(result.get("error") or "failed"), code)
    raise typer.Exit(code)
