"""The `conveyor` command line.

Exit codes: 0 done; 1 the deployment did not go live, was rolled back, or was refused; 2 usage,
configuration or input error (and then nothing was changed).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from conveyor import __version__
from conveyor.agent.client import AgentClient, AgentUnavailable
from conveyor.cli.output import Progress, emit_json, fail
from conveyor.config import Config, ConfigError, ResolvedEnvironment, find_config, load_config
from conveyor.paths import Paths
from conveyor.releases import ReleaseError, ReleaseStore
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
    data = _release_json(rec)
    if json_out:
        emit_json(data)
    else:
        commit = f" commit {rec.commit[:12]}" if rec.commit else ""
        console.print(f"release {rec.version}: {rec.digest[:19]}…{commit} ({_size(rec.size)})")


def _release_json(rec: Any) -> dict[str, Any]:
    data = asdict(rec)
    data["created_at"] = rec.created_at.isoformat()
    return data


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


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
        emit_json([_release_json(r) for r in recs])
        return
    table = Table("version", "digest", "commit", "created", box=None)
    for r in recs:
        table.add_row(r.version, r.digest[:19], (r.commit or "")[:12], _when(r.created_at))
    console.print(table)


def _when(at: datetime | None) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if at else "-"


# --- deploy, rollback -------------------------------------------------------------------------


def _agent_call(proj: Project, request: dict[str, Any], json_out: bool) -> dict[str, Any]:
    client = proj.agent()
    with Progress(json_out) as progress:
        try:
            client.ensure()
            return client.request(request, on_progress=progress)
        except AgentUnavailable as exc:
            fail(f"cannot reach the conveyor agent: {exc}; see {proj.paths.agent_log}", 1)


def _finish(result: dict[str, Any], json_out: bool, done: str) -> None:
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


@app.command()
def deploy(
    version: Annotated[
        str, typer.Argument(help="A release created with `conveyor release create`.")
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
    cfg = proj.config()
    proj.environment(cfg, env)
    store = proj.store()
    try:
        if store.get_release(cfg.app.name, version) is None:
            fail(
                f"unknown release {version!r}: create it with "
                f"`conveyor release create --version {version}` (see `conveyor releases`)"
            )
    finally:
        store.close()
    result = _agent_call(proj, {"op": "deploy", "env": env, "version": version}, json_out)
    _finish(result, json_out, "{version} is live in {environment}")


@app.command()
def rollback(env: EnvReq, json_out: JsonOpt = False) -> None:
    """Go back to the previous version: instantly to the standby color when it still runs,
    otherwise by redeploying the previous successful version blue/green.

    Example:

        conveyor rollback --env dev
    """
    proj = project()
    cfg = proj.config()
    proj.environment(cfg, env)
    result = _agent_call(proj, {"op": "rollback", "env": env}, json_out)
    _finish(result, json_out, "rolled back {environment} to {version}")


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
    proj.config()
    result = _agent_call(proj, {"op": "promote", "env": env, "full": full}, json_out)
    _finish(result, json_out, "promoted deployment #{deployment} ({version})")


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
    proj.config()
    result = _agent_call(proj, {"op": "abort", "env": env, "reason": reason}, json_out)
    _finish(result, json_out, "aborting deployment #{deployment} ({version})")


# --- status, history, logs --------------------------------------------------------------------


@app.command()
def status(env: EnvOpt = "dev", json_out: JsonOpt = False) -> None:
    """Show what runs in an environment: active and standby versions, health, URL.

    Example:

        conveyor status --env dev --json
    """
    proj = project()
    cfg = proj.config()
    proj.environment(cfg, env)
    client = proj.agent()
    try:
        client.ensure()
        result = client.request({"op": "status", "env": env}, timeout=30)
    except AgentUnavailable as exc:
        fail(f"cannot reach the conveyor agent: {exc}", 1)
    if not result.get("ok"):
        fail(str(result.get("error")), int(result.get("exit", 1)))
    data = result["data"]
    if json_out:
        emit_json(data)
        return
    console.print(
        f"[bold]{data['app']}[/] / {env}"
        + (f"  (deploying: {data['deploying']})" if data.get("deploying") else "")
    )
    dep = data.get("deployment")
    if dep:
        where = f"{dep['phase']}"
        if dep.get("step"):
            where = f"step {dep['step']}/{dep['steps']} at {dep['weight']}%"
        console.print(
            f"deployment #{dep['id']}: {dep['version']} ({dep['strategy']}), {where}"
            + (f" — {dep['waiting']}" if dep.get("waiting") else "")
        )
        for m in dep.get("measurements", []):
            color = {"pass": "green", "fail": "red"}.get(m["verdict"], "yellow")
            console.print(f"  {m['check']}: {m['detail']} [{color}]{m['verdict']}[/]")
        for name, url in dep.get("previews", {}).items():
            console.print(f"  preview of {name}: {url}")
    last = data.get("last_deployment")
    if not dep and last:
        first_line = (last.get("reason") or "").splitlines()[0] if last.get("reason") else ""
        console.print(
            f"last deployment #{last['id']}: {last['version']} {last['outcome']} — {first_line}"
        )
    table = Table("service", "active", "health", "standby", "url", box=None)
    for s in data["services"]:
        a, sb = s["active"], s["standby"]
        active = f"{a['version']} ({a['color']})" if a else "-"
        health = ("[green]healthy[/]" if a["healthy"] else "[red]unhealthy[/]") if a else "-"
        standby = "-"
        if sb:
            until = (
                datetime.fromisoformat(sb["until"]).astimezone().strftime("%H:%M:%S")
                if sb.get("until")
                else "?"
            )
            standby = f"{sb['version']} ({sb['color']}) until {until}"
        table.add_row(s["name"], active, health, standby, s["url"] or "-")
    console.print(table)


@app.command()
def history(
    env: EnvOpt = "dev",
    limit: Annotated[int, typer.Option(help="How many deployments to show.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """List deployments of an environment, newest first, with outcome and reason.

    Example:

        conveyor history --env dev --json
    """
    proj = project()
    cfg = proj.config()
    store = proj.store()
    try:
        deps = store.list_deployments(cfg.app.name, env, limit=limit)
        rows = []
        for d in deps:
            row = {
                "id": d.id,
                "version": d.version,
                "kind": d.kind,
                "outcome": d.outcome,
                "started_at": d.started_at.isoformat(),
                "finished_at": d.finished_at.isoformat() if d.finished_at else None,
                "reason": d.reason,
                "previous_version": d.previous_version,
            }
            if json_out:
                events = store.events(d.id)
                latest = [e for e in events if e.state == "analysis"]
                row["measurements"] = latest[-1].data.get("measurements", []) if latest else []
                plan = next((e for e in events if e.state == "plan"), None)
                row["strategy"] = plan.data.get("strategy") if plan else None
                failed = [e for e in events if e.state == "measurement"]
                row["trigger"] = (
                    failed[-1].data.get("measurement")
                    if failed and d.outcome == "rolled_back"
                    else None
                )
                row["events"] = [
                    {"at": e.at.isoformat(), "state": e.state, "reason": e.reason, **e.data}
                    for e in events
                ]
            rows.append(row)
    finally:
        store.close()
    if json_out:
        emit_json(rows)
        return
    table = Table("id", "version", "kind", "outcome", "started", "took", "reason", box=None)
    colors = {"succeeded": "green", "failed": "red", "rolled_back": "yellow", "aborted": "yellow"}
    for d in deps:
        took = f"{(d.finished_at - d.started_at).total_seconds():.1f}s" if d.finished_at else "-"
        color = colors.get(d.outcome, "cyan")
        table.add_row(
            str(d.id),
            d.version,
            d.kind,
            f"[{color}]{d.outcome}[/]",
            _when(d.started_at),
            took,
            d.reason.splitlines()[0] if d.reason else "",
        )
    console.print(table)


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="Service name from conveyor.toml.")],
    env: EnvOpt = "dev",
    color: Annotated[
        str | None, typer.Option(help="blue or green (default: the active color).")
    ] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines to show.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
) -> None:
    """Show a service's output (stdout and stderr of its processes).

    Example:

        conveyor logs web --env dev --follow
    """
    from conveyor.runtimes.local import tail

    proj = project()
    cfg = proj.config()
    envcfg = proj.environment(cfg, env)
    if service not in envcfg.services:
        fail(f"unknown service {service!r} (known: {', '.join(envcfg.services)})")
    explicit = color is not None
    if color is None:
        store = proj.store()
        try:
            active = [
                i
                for i in store.instances(cfg.app.name, env)
                if i.service == service and i.role == "active"
            ]
        finally:
            store.close()
        color = active[0].color if active else None
    candidates = [color] if color else ["blue", "green"]
    paths = [proj.paths.service_log(env, service, c) for c in candidates]
    existing = [p for p in paths if p.exists()]
    if not existing:
        fail(f"no logs yet for {service} in {env}", 1)
    path = max(existing, key=lambda p: p.stat().st_mtime)
    for line in tail(path, lines):
        print(line)
    if follow:
        # Follow the service, not one process: both colors' files, so a deploy or a rollback
        # that moves traffic to the other color keeps showing up here.
        colors = [color] if explicit and color else ["blue", "green"]
        _follow({c: proj.paths.service_log(env, service, c) for c in colors})


def _follow(files: dict[str, Path]) -> None:
    offsets = {c: (p.stat().st_size if p.exists() else 0) for c, p in files.items()}
    prefix = len(files) > 1
    try:
        while True:
            idle = True
            for c, p in files.items():
                try:
                    size = p.stat().st_size
                except FileNotFoundError:
                    continue
                if size < offsets[c]:
                    offsets[c] = 0  # truncated or replaced
                if size == offsets[c]:
                    continue
                with open(p, "rb") as f:
                    f.seek(offsets[c])
                    data = f.read(size - offsets[c])
                end = data.rfind(b"\n") + 1  # only whole lines; the rest comes next round
                offsets[c] += end
                for line in data[:end].decode(errors="replace").splitlines():
                    print(f"[{c}] {line}" if prefix else line, flush=True)
                idle = idle and end == 0
            if idle:
                time.sleep(0.2)
    except KeyboardInterrupt:
        return


# --- agent ------------------------------------------------------------------------------------


@agent_app.command("start")
def agent_start() -> None:
    """Start the agent in the background (commands start it on demand too).

    Example:

        conveyor agent start
    """
    proj = project()
    proj.config()
    try:
        info = proj.agent().ensure()
    except AgentUnavailable as exc:
        fail(str(exc), 1)
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
    try:
        stopped = proj.agent().stop(keep_running)
    except AgentUnavailable as exc:
        fail(str(exc), 1)
    if not stopped:
        console.print("agent was not running")
        return
    console.print(
        "agent stopped"
        + (": services keep serving" if keep_running else ", services and proxy stopped")
    )


@agent_app.command("status")
def agent_status(json_out: JsonOpt = False) -> None:
    """Show whether the agent runs, its pid and its admin (metrics) address.

    Example:

        conveyor agent status --json
    """
    proj = project()
    client = proj.agent()
    ping = client.ping()
    info = client.info() if ping else None
    data: dict[str, Any] = {"running": ping is not None, **(info or {})}
    if json_out:
        emit_json(data)
    elif ping is None:
        console.print("agent not running")
    else:
        console.print(
            f"agent running, pid {data.get('pid')}, metrics at {data.get('admin')}/metrics"
        )
    raise typer.Exit(0 if ping is not None else 1)


# --- demo -------------------------------------------------------------------------------------


@app.command()
def demo(
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the scratch directory afterwards.")
    ] = False,
) -> None:
    """Run conveyor's main job end to end in a scratch directory: deploy v1, switch to v2 under
    live traffic, refuse a v3 that never gets healthy, roll back, and print a summary.

    Example:

        conveyor demo
    """
    from conveyor.demo import run_demo

    raise typer.Exit(run_demo(keep=keep))


def main() -> None:
    app()
