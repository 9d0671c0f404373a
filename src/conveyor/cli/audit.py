"""`conveyor audit` (list the entries) and `conveyor audit verify` (check the hash chain).

Read from the state database directly: the log is shared by every agent and host that uses it,
and must be readable while no agent runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from conveyor.cli.common import JsonOpt, app, project, when
from conveyor.cli.output import clean, console, emit_json, fail

audit_app = typer.Typer(
    help="The audit log: who changed what, when, and how it ended (refusals too).\n\n"
    "Example:\n\n    conveyor audit --env production --since 24h",
    invoke_without_command=True,
)
app.add_typer(audit_app, name="audit")


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    env: Annotated[
        str | None, typer.Option("--env", "-e", help="Only this environment's entries.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="DURATION", help="Only entries this recent (e.g. 1h, 7d)."),
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this user's entries.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """List the audit log of this app, oldest first (the newest --limit entries).

    Example:

        conveyor audit --env production --since 1h --actor alice --json
    """
    if ctx.invoked_subcommand is not None:
        return
    if limit < 1:
        fail(f"--limit must be at least 1 (got {limit})")
    from conveyor.store import audit as audit_log

    cutoff = None
    if since is not None:
        cutoff = datetime.now(UTC) - timedelta(seconds=_since_seconds(since))
    entries = _remote_entries(env, cutoff, actor, limit)
    if entries is None:
        proj = project()
        cfg = proj.config()
        if env is not None:
            proj.environment(cfg, env)
        store = proj.store()
        try:
            found = audit_log.entries(
                store, app=cfg.app.name, environment=env, since=cutoff, actor=actor, limit=limit
            )
        finally:
            store.close()
        entries = [entry.to_json() for entry in found]
    if json_out:
        emit_json({"exit": 0, "entries": entries})
        return
    if not entries:
        console.print("no audit entries" + (" match" if env or since or actor else " yet"))
        return
    for entry in entries:
        line = (
            f"#{entry['id']} {when(datetime.fromisoformat(entry['at']))}  {entry['actor']}  "
            f"{entry['action']} {entry['environment'] or '-'} {entry['target']}: "
            f"{entry['outcome']}"
        )
        if entry["detail"]:
            line += f" — {entry['detail']}"
        console.print(clean(line), markup=False, soft_wrap=True)


def _remote_entries(
    env: str | None, cutoff: datetime | None, actor: str | None, limit: int
) -> list[dict[str, Any]] | None:
    """The entries from the remote server's API (`--server`), oldest first; None locally."""
    from conveyor.cli.remote import Remote, server

    url = server()
    if url is None:
        return None
    params: dict[str, Any] = {"limit": min(limit, 500)}
    for key, value in (("environment", env), ("actor", actor)):
        if value is not None:
            params[key] = value
    if cutoff is not None:
        params["since"] = cutoff.isoformat()
    page = Remote(url).get("/audit", **params)
    return list(reversed(page["entries"]))


def _since_seconds(text: str) -> float:
    """--since: a duration as in conveyor.toml, or a number of days ("7d")."""
    from conveyor.core.durations import parse_duration

    try:
        if text.endswith("d") and text[:-1].isdigit():
            return int(text[:-1]) * 86400.0
        return parse_duration(text)
    except ValueError as exc:
        fail(f"--since: {exc}")


@audit_app.command()
def verify(json_out: JsonOpt = False) -> None:
    """Check the audit log's hash chain (every app in the database): exit 1 naming the first
    entry that was edited, deleted or moved.

    Example:

        conveyor audit verify
    """
    from conveyor.store import audit as audit_log

    proj = project()
    store = proj.store()
    try:
        count, broken = audit_log.check(store)
    finally:
        store.close()
    result: dict[str, Any] = {"exit": 0 if broken is None else 1, "entries": count}
    if broken is None:
        if json_out:
            emit_json({**result, "broken": None})
        else:
            console.print(f"[green]✓[/] the audit log holds: {count} entries, chain intact")
        return
    message = f"the audit log is broken at entry #{broken.id}: {broken.reason}"
    if json_out:
        emit_json({**result, "broken": {"id": broken.id, "reason": broken.reason}})
        raise typer.Exit(1)
    fail(f"{message} ({count - 1} entries before it hold)", 1)
