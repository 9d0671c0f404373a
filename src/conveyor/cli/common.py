"""What every command shares: the typer apps, the project lookup, talking to the agent.

Commands answer at once: this module and the command modules import only typer and the
standard library when they load. The configuration (pydantic), the database (SQLAlchemy) and
rich are imported by the commands that use them, when they use them.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from conveyor import __version__
from conveyor.cli.output import (
    Progress,
    agent_started,
    clean,
    console,
    emit_json,
    fail,
    json_mode,
    set_json_mode,
)
from conveyor.paths import Paths

if TYPE_CHECKING:
    from conveyor.agent.client import AgentClient
    from conveyor.config import Config, ResolvedEnvironment
    from conveyor.store.db import Store

# `conveyor --help` lists commands in the order a user needs them, not alphabetically.
COMMAND_ORDER = (
    "init",
    "release",
    "releases",
    "deploy",
    "gates",
    "check",
    "approve",
    "reject",
    "status",
    "history",
    "logs",
    "rollback",
    "promote",
    "abort",
    "stop",
    "start",
    "manifest",
    "schema",
    "render",
    "lock",
    "unlock",
    "locks",
    "audit",
    "secrets",
    "tokens",
    "access",
    "agent",
    "serve",
    "proxy",
    "doctor",
    "db",
    "migrate",
    "migrations",
    "demo",
    "completion",
)


class OrderedGroup(TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # Before any option of any command is coerced: without pydantic from here on
        # (cli/coercion.py says why). Without the hook (another typer), typer's own coercion.
        try:
            from conveyor.cli.coercion import install
        except ImportError:  # pragma: no cover - a typer without the internals it uses
            pass
        else:
            install(self, ctx)
        rest: list[str] = super().parse_args(ctx, args)
        return rest

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: index for index, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))


class Command(TyperCommand):
    """Usage lines name a required argument plainly (`VERSION`), not as typer does (`{VERSION}`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces: list[str] = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]


app = typer.Typer(
    name="conveyor",
    cls=OrderedGroup,
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


def _json_option(value: bool) -> bool:
    set_json_mode(value)
    return value


def json_option(help: str) -> Any:
    """The `--json` option: also makes every failure of the command a JSON object."""
    return typer.Option("--json", help=help, callback=_json_option, is_eager=True)


JsonOpt = Annotated[
    bool, json_option("Print one JSON object for machines (failures too: error and exit).")
]
EnvOpt = Annotated[str, typer.Option("--env", "-e", help="Environment name, e.g. dev, staging.")]
EnvReq = Annotated[str, typer.Option("--env", "-e", help="Environment to act on (required).")]


class Project:
    """The conveyor.toml this command acts on, and where its state lives."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.dir = config_path.parent
        self.paths = Paths.for_project(self.dir)

    def config(self) -> Config:
        from conveyor.config import ConfigError, load_config

        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            fail(str(exc))

    def environment(self, cfg: Config, env: str) -> ResolvedEnvironment:
        """Environment `env` resolved; an unknown one is a usage error (exit 2)."""
        from conveyor.config import ConfigError

        try:
            return cfg.environment(env)
        except ConfigError as exc:
            fail(str(exc))

    def checked(self, env: str) -> Config:
        """The configuration, after checking that it has environment `env`."""
        cfg = self.config()
        self.environment(cfg, env)
        return cfg

    def store(self) -> Store:
        from conveyor.store.db import Store, database_url

        self.paths.ensure()
        return Store.open(database_url(self.paths.home, self.config_path))

    def agent(self) -> AgentClient:
        # Imported here: --help needs no sockets or subprocesses.
        from conveyor.agent.client import AgentClient

        return AgentClient(self.dir, self.paths)


CONFIG_NAME = "conveyor.toml"


def project() -> Project:
    start = Path(os.environ.get("CONVEYOR_PROJECT", ".")).resolve()
    directory = start if start.is_dir() else start.parent
    # The nearest conveyor.toml, found without importing the configuration package (pydantic);
    # when there is none, conveyor.config says so in its words.
    for candidate in (directory, *directory.parents):
        if (candidate / CONFIG_NAME).is_file():
            return Project(candidate / CONFIG_NAME)
    from conveyor.config import ConfigError, find_config

    try:
        return Project(find_config(start))
    except ConfigError as exc:
        fail(str(exc))  # it says to run `conveyor init`


def ready_agent(proj: Project, env: str | None) -> AgentClient:
    """The project's agent, started when it does not run; its recovery is over when this returns.

    A running agent checks `env` itself; before starting one, `env` is checked here, so an
    unknown --env (exit 2) starts nothing. When this had to start the agent, the command says
    so (with --json: in the `agent` field of its JSON output).
    """
    from conveyor.agent.client import AgentUnavailable

    client = proj.agent()
    try:
        if client.ping() is None:
            if env is None:
                proj.config()
            elif not names_environment(proj.config_path, env):
                proj.checked(env)  # says what is wrong, in the configuration's words
            client.ensure()
    except AgentUnavailable as exc:
        fail(f"cannot reach the conveyor agent: {exc}; see {proj.paths.agent_log}", 1)
    if client.started is not None:
        agent_started(started_facts(client.started))
    return client


def names_environment(config_path: Path, env: str) -> bool:
    """Whether conveyor.toml plainly describes an app with environment `env`, read with tomllib
    alone: an [app] name, a service, and `env` among the environments.

    Before starting the agent, an unknown --env, or a file that describes no app yet, must start
    nothing. Loading the configuration to check it costs pydantic (about 100 ms, while the user
    waits for the agent); the agent reports any other configuration error itself. False means
    "not plainly": the caller then loads the configuration, which says what is wrong.
    """
    import tomllib

    try:
        data = tomllib.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    app, services = data.get("app"), data.get("services")
    if not (isinstance(app, dict) and app.get("name") and isinstance(services, dict) and services):
        return False
    declared = data.get("environments") or {"dev": {}}  # none declared: dev (config.models)
    return isinstance(declared, dict) and isinstance(declared.get(env), dict)


def started_facts(ping: dict[str, Any]) -> dict[str, Any]:
    """What the `agent` field says: the new agent, how its predecessor ended, what it resolved."""
    return {
        "started": True,
        "pid": ping.get("pid"),
        "previous": ping.get("previous"),
        "interrupted": ping.get("interrupted", []),
        "notes": ping.get("notes", []),
    }


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
    server_url: Annotated[
        str | None,
        typer.Option(
            "--server",
            metavar="URL",
            help="A remote conveyor's API (or CONVEYOR_SERVER); the token in CONVEYOR_TOKEN "
            "or the 0600 file CONVEYOR_TOKEN_FILE.",
        ),
    ] = None,
) -> None:
    if project_dir is not None:
        os.environ["CONVEYOR_PROJECT"] = str(project_dir)
    if server_url is not None:
        os.environ["CONVEYOR_SERVER"] = server_url


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


def acting_user(proj: Project) -> str:
    """Who runs this command (conveyor.identity); a name that cannot be recorded is exit 2."""
    from conveyor.identity import IdentityError, current_user

    try:
        return current_user(proj.dir)
    except IdentityError as exc:
        fail(str(exc))


def remote_mode() -> bool:
    """Whether commands go to a remote conveyor's API (`--server`, CONVEYOR_SERVER)."""
    from conveyor.cli.remote import server

    return server() is not None


def agent_call(proj: Project | None, request: dict[str, Any], json_out: bool) -> dict[str, Any]:
    from conveyor.agent.client import AgentUnavailable

    if proj is None or remote_mode():
        return _remote_call(request, json_out)
    # The agent acts for this user: the audit log and the locks it takes name them.
    request = {**request, "actor": acting_user(proj)}
    client = ready_agent(proj, str(request["env"]))
    with Progress(json_out) as progress:
        try:
            result = client.request(request, on_progress=progress)
        except AgentUnavailable as exc:
            fail(f"cannot reach the conveyor agent: {exc}; see {proj.paths.agent_log}", 1)
        except KeyboardInterrupt:
            pass
        else:
            progress.settle(None if result.get("ok") else str(result.get("error") or ""))
            return result
    detached(progress.deployment, str(request.get("env")))


def _remote_call(request: dict[str, Any], json_out: bool) -> dict[str, Any]:
    """`agent_call` through the remote server's API: the same progress and result."""
    from conveyor.cli.remote import Remote, server

    url = server()
    if url is None:
        fail("this command needs a conveyor.toml here, or --server URL")
    remote = Remote(url)
    with Progress(json_out) as progress:
        try:
            result = remote.request(request, progress)
        except KeyboardInterrupt:
            pass
        else:
            progress.settle(None if result.get("ok") else str(result.get("error") or ""))
            return result
    detached(progress.deployment, str(request.get("env")))


def detached(deployment: int | None, env: str) -> NoReturn:
    """Ctrl-C: this command stops waiting, but the agent carries on with the request."""
    what = f"deployment #{deployment}" if deployment is not None else "the request"
    message = (
        f"detached — {what} continues in the agent; `conveyor status --env {env}` to follow "
        f"it, `conveyor abort --env {env}` to stop it"
    )
    if json_mode():
        emit_json({"error": message, "exit": 130, "deployment": deployment})
    else:
        from rich.text import Text

        console.print(Text(message), soft_wrap=True)
    raise typer.Exit(130)


def finish(result: dict[str, Any], json_out: bool, done: str) -> None:
    code = int(result.get("exit", 1))
    data = result.get("data") or {}
    if result.get("lock"):  # refused: the environment is locked (conveyor.engine.locks)
        data = {**data, "lock": result["lock"]}
    error = clean(str(result["error"])) if result.get("error") else None
    if json_out:
        if data.get("reason"):
            data = {**data, "reason": clean(str(data["reason"]))}
        emit_json({"exit": code, "error": error, **data})
    elif code == 0:
        switch = data.get("switch_ms") or {}
        took = ", ".join(f"{k} switched in {v:g} ms" for k, v in switch.items())
        console.print(f"[green]✓[/] {done.format(**data)}" + (f" ({took})" if took else ""))
        reason = str(data.get("reason") or "")
        if reason.startswith("live, unverified"):
            # Succeeded, but nothing showed that it works (no traffic during the bake).
            from rich.markup import escape

            console.print(
                f"[yellow]warning:[/] {escape(clean(reason))} — it is measured while the previous "
                "version waits on standby, and switched back if it fails"
            )
    else:
        fail(error or "failed", code)
    raise typer.Exit(code)
