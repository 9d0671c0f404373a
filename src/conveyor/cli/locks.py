"""`conveyor lock`, `unlock`, `locks`: an environment's lock, taken and released by hand.

These act on the state database directly, not through the agent: the lock is shared by every
agent and host using that database, and must be takeable while no agent runs (maintenance).
Each change is written together with its audit entry, in one transaction.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from conveyor.cli.common import EnvReq, JsonOpt, Project, acting_user, app, project, when
from conveyor.cli.output import clean, console, emit_json, fail, json_mode

if TYPE_CHECKING:
    from conveyor.store.db import Store
    from conveyor.store.locks import LockRecord


def _open(proj: Project, env: str) -> tuple[str, Store]:
    cfg = proj.checked(env)
    return cfg.app.name, proj.store()


@app.command()
def lock(
    env: EnvReq,
    reason: Annotated[
        str, typer.Option("--reason", help="Why: shown to whoever is refused (required).")
    ] = "",
    json_out: JsonOpt = False,
) -> None:
    """Lock an environment by hand: deploys, rollbacks and stops are refused until
    `conveyor unlock`, on every host sharing the state database. Recorded in the audit log.

    Example:

        conveyor lock --env production --reason "database maintenance until 14:00"
    """
    from conveyor.manual_locks import LockRefused
    from conveyor.manual_locks import lock as take

    if not reason.strip():
        fail("--reason is required: say why, it is what others see when they are refused")
    proj = project()
    who = acting_user(proj)
    app_name, store = _open(proj, env)
    try:
        want = take(store, app_name, env, who, reason)
    except LockRefused as exc:
        fail(str(exc), 1)
    finally:
        store.close()
    if json_out:
        emit_json({"exit": 0, "lock": want.to_json()})
    else:
        console.print(f"[green]✓[/] {env} is locked by {clean(who)}: {clean(want.what)}")


@app.command()
def unlock(
    env: EnvReq,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also break a lock that a running deploy holds (it goes on, unprotected).",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Release an environment's lock taken with `conveyor lock`. A lock held by a deploy in
    progress is released when it ends; `--force` breaks it. Recorded in the audit log.

    Example:

        conveyor unlock --env production
    """
    from conveyor import manual_locks

    proj = project()
    who = acting_user(proj)
    app_name, store = _open(proj, env)
    try:
        current = manual_locks.current(store, app_name, env)
        if current is None:
            _say_unlocked(env, None, json_out, f"{env} was not locked")
            return
        live = manual_locks.is_live(current)
        if live and force and not yes:
            if not sys.stdin.isatty() or json_mode():
                fail(f"breaking the lock of a running {current.what} needs --yes")
            typer.confirm(
                f"Break the lock of the running {current.what} in {env}? It goes on unprotected",
                abort=True,
            )
        try:
            gone = manual_locks.unlock(store, app_name, env, who, force)
        except manual_locks.LockRefused as exc:
            fail(str(exc), 1)
        if gone is None:  # released meanwhile
            _say_unlocked(env, None, json_out, f"{env} was not locked")
            return
    finally:
        store.close()
    verb = "broke the lock of" if live else "unlocked"
    _say_unlocked(env, gone, json_out, f"{verb} {env} (held by {gone.holder}: {gone.what})")


def _say_unlocked(env: str, gone: LockRecord | None, json_out: bool, text: str) -> None:
    if json_out:
        emit_json({"exit": 0, "environment": env, "released": gone.to_json() if gone else None})
    else:
        console.print(f"[green]✓[/] {clean(text)}")


@app.command(name="locks")
def list_locks(json_out: JsonOpt = False) -> None:
    """Show which environments are locked, by whom, since when and why.

    Example:

        conveyor locks --json
    """
    from conveyor.store import locks as stored

    proj = project()
    cfg = proj.config()
    store = proj.store()
    now = _utcnow()
    try:
        with store.reading() as session:
            found = stored.all_locks(session, cfg.app.name)
    finally:
        store.close()
    if json_out:
        rows = [{**lock.to_json(), "expired": lock.expired(now)} for lock in found]
        emit_json({"exit": 0, "locks": rows})
        return
    if not found:
        console.print("no environment is locked")
        return
    for item in found:
        if item.expires_at is None:
            lease = "until unlocked"
        elif item.expired(now):
            lease = "lease expired: the next deploy takes it over"
        else:
            lease = f"lease renewed, runs out {when(item.expires_at)}"
        console.print(
            f"{item.environment}: {clean(item.what)} — {clean(item.holder)} on {item.host} "
            f"(pid {item.pid}) since {when(item.acquired_at)}; {lease}",
            soft_wrap=True,
            markup=False,
        )


def wait_until_free(proj: Project, app_name: str, env: str, deadline: float) -> bool:
    """Poll the lock of `env` until it is free (True) or `deadline` (time.monotonic) passes.

    Says what it waits for, again whenever the holder changes, and how it ended."""
    from conveyor.core.durations import format_duration
    from conveyor.store import locks as stored

    started = time.monotonic()
    shown = None
    store = proj.store()
    try:
        while True:
            now = _utcnow()
            with store.reading() as session:
                current = stored.get(session, app_name, env)
            if current is None or current.expired(now):
                _note(f"{env} is free after {format_duration(round(time.monotonic() - started))}")
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if shown != current.owner:
                shown = current.owner
                _note(
                    f"waiting for {env} (up to {format_duration(round(left))}): held by "
                    f"{current.holder} since {when(current.acquired_at)}: {current.what}"
                )
            time.sleep(min(1.0, left))
    finally:
        store.close()


def _note(text: str) -> None:
    if not json_mode():
        print(clean(text), file=sys.stderr, flush=True)


def _utcnow() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
