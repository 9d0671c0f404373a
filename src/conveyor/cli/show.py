"""`conveyor status`, `history`, `logs`: looking at an environment."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from conveyor.cli.common import (
    Command,
    EnvOpt,
    JsonOpt,
    Project,
    app,
    json_option,
    project,
    ready_agent,
    when,
)
from conveyor.cli.output import console, emit_json, fail, take_agent_started

if TYPE_CHECKING:
    from conveyor.runtimes.logfile import LogLine

# --- status, history, logs --------------------------------------------------------------------


@app.command()
def status(env: EnvOpt = "dev", json_out: JsonOpt = False) -> None:
    """Show what runs in an environment: active and standby versions, health, URL.

    Example:

        conveyor status --env dev --json
    """
    data = _ask({"op": "status", "env": env})
    if json_out:
        emit_json(data)
        return
    from rich.markup import escape
    from rich.table import Table

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
    for s in data["services"]:
        restarts = (s["active"] or {}).get("restarts")
        if restarts:
            a = s["active"]
            color = "red" if restarts["crash_looping"] else "yellow"
            line = escape(f"{s['name']} {a['version']} ({a['color']}): {_restarts(restarts)}")
            console.print(f"[{color}]{line}[/]")
    for note in data.get("notes", []):
        console.print(f"[yellow]note:[/] {escape(note)}")


def _restarts(restarts: dict[str, Any]) -> str:
    """ "crash-looping — 5 restarts in 2m, last: exited with code 3 at 21:40:12" (local time)."""
    text = str(restarts["summary"])
    last = restarts.get("last_exit")
    if last:
        at = datetime.fromisoformat(last["at"]).astimezone().strftime("%H:%M:%S")
        text += f", last: {last['detail']} at {at}"
    if restarts.get("next_restart_in") is not None:
        text += f"; restarting in {restarts['next_restart_in']:.1f}s"
    return text


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
    # The agent reads the history: it holds the database open, and it has settled whatever the
    # previous agent left in progress before it answers.
    request = {"op": "history", "env": env, "limit": limit, "detail": json_out}
    rows = _ask(request)["deployments"]
    if json_out:
        # An object, not a bare list: it has room for the `agent` field.
        emit_json({"environment": env, "deployments": rows})
        return
    from rich.table import Table

    table = Table("id", "version", "kind", "outcome", "started", "took", "reason", box=None)
    colors = {"succeeded": "green", "failed": "red", "rolled_back": "yellow", "aborted": "yellow"}
    for d in rows:
        started = datetime.fromisoformat(d["started_at"])
        finished = datetime.fromisoformat(d["finished_at"]) if d["finished_at"] else None
        took = f"{(finished - started).total_seconds():.1f}s" if finished else "-"
        color = colors.get(d["outcome"], "cyan")
        table.add_row(
            str(d["id"]),
            d["version"],
            d["kind"],
            f"[{color}]{d['outcome']}[/]",
            when(started),
            took,
            d["reason"].splitlines()[0] if d["reason"] else "",
        )
    console.print(table)


def _ask(request: dict[str, Any], proj: Project | None = None) -> dict[str, Any]:
    """One question to the agent of `proj` (started if needed), or without a project to the
    remote server when one is set (`--server`); its data, or the command fails as it says."""
    from conveyor.agent.client import AgentUnavailable
    from conveyor.cli.remote import Remote, server

    url = server() if proj is None else None
    if url is not None:
        result = Remote(url).request(request, None)
        if not result.get("ok"):
            fail(str(result.get("error")), int(result.get("exit", 1)))
        return dict(result["data"])
    proj = proj or project()
    client = ready_agent(proj, str(request["env"]))
    try:
        result = client.request(request, timeout=30)
    except AgentUnavailable as exc:
        fail(f"cannot reach the conveyor agent: {exc}; see {proj.paths.agent_log}", 1)
    if not result.get("ok"):
        fail(str(result.get("error")), int(result.get("exit", 1)))
    return dict(result["data"])


COLORS = ("blue", "green")


@app.command(cls=Command)
def logs(
    service: Annotated[
        str, typer.Argument(metavar="SERVICE", help="Service name from conveyor.toml.")
    ],
    env: EnvOpt = "dev",
    color: Annotated[
        str | None, typer.Option(help="blue or green (default: the active color).")
    ] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines to show.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    json_out: Annotated[
        bool, json_option("One JSON object per line: time, service, color, stream, line.")
    ] = False,
) -> None:
    """Show a service's output (stdout and stderr of its processes).

    Example:

        conveyor logs web --env dev --follow
    """
    from conveyor.runtimes.logfile import tail_lines

    proj = project()
    cfg = proj.config()
    envcfg = proj.environment(cfg, env)
    if service not in envcfg.services:
        fail(f"unknown service {service!r} (known: {', '.join(envcfg.services)})")
    if color is not None and color not in COLORS:
        fail(f"--color must be blue or green (got {color!r})")
    ready_agent(proj, env)
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
    candidates = [color] if color else list(COLORS)
    paths = {c: proj.paths.service_log(env, service, c) for c in candidates}
    existing = {c: p for c, p in paths.items() if p.exists()}
    if not existing:
        fail(f"no logs yet for {service} in {env}", 1)
    shown = max(existing, key=lambda c: existing[c].stat().st_mtime)
    out = _LineWriter(service, json_out)
    if json_out and (facts := take_agent_started()) is not None:
        # A stream of lines has no object to hold the field: it comes first, on its own.
        print(json.dumps({"agent": facts}, default=str), flush=True)
    for line in tail_lines(existing[shown], lines):
        out.write(shown, line, prefix=False)
    if follow:
        # Follow the service, not one process: both colors' files, so a deploy or a rollback
        # that moves traffic to the other color keeps showing up here.
        colors = [color] if explicit and color else list(COLORS)
        _follow({c: proj.paths.service_log(env, service, c) for c in colors}, out)


class _LineWriter:
    """Prints log lines as the app wrote them, or as JSON objects (one per line) with `--json`."""

    def __init__(self, service: str, json_out: bool) -> None:
        self.service = service
        self.json_out = json_out

    def write(self, color: str, line: LogLine, prefix: bool) -> None:
        if self.json_out:
            # time and stream are null for lines written before the log writer stamped them.
            record = {
                "time": line.time,
                "service": self.service,
                "color": color,
                "stream": line.stream,
                "line": line.text,
            }
            print(json.dumps(record), flush=True)
        else:
            print(f"[{color}] {line.text}" if prefix else line.text, flush=True)


def _follow(files: dict[str, Path], out: _LineWriter) -> None:
    from conveyor.runtimes.logfile import Joiner, parse

    offsets = {c: (p.stat().st_size if p.exists() else 0) for c, p in files.items()}
    # A long line's pieces may be read in different rounds: each file keeps its joiner.
    joiners = {c: Joiner() for c in files}
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
                    offsets[c], joiners[c] = 0, Joiner()  # truncated or replaced
                if size == offsets[c]:
                    continue
                with open(p, "rb") as f:
                    f.seek(offsets[c])
                    data = f.read(size - offsets[c])
                end = data.rfind(b"\n") + 1  # only whole lines; the rest comes next round
                offsets[c] += end
                raw = data[: max(end - 1, 0)].decode(errors="replace").split("\n") if end else []
                for line in joiners[c].feed(parse(r) for r in raw):
                    out.write(c, line, prefix)
                idle = idle and end == 0
            if idle:
                time.sleep(0.2)
    except KeyboardInterrupt:
        return
