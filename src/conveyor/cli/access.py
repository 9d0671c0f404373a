"""`conveyor tokens` and `conveyor access`: API tokens and role bindings, managed on this machine.

Whoever runs conveyor here can open the state database, so local access means full control:
these commands act as admin (conveyor.auth.service.local_principal). They write the database
directly, each change with its audit entry in one transaction. The rules (a token carries at
most its owner's roles; the first admin) are conveyor.auth.service's, the same the API applies.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from conveyor.cli.common import Command, JsonOpt, Project, acting_user, app, project, when
from conveyor.cli.output import clean, console, emit_json, fail, json_mode

if TYPE_CHECKING:
    from datetime import datetime

    from conveyor.auth.service import AuditContext
    from conveyor.config import Config
    from conveyor.core.access import Role
    from conveyor.store.access import BindingRecord, TokenRecord

tokens_app = typer.Typer(
    help="API tokens (`cvy_...`) for the HTTP API and CI: made, listed and revoked here, on the "
    "machine itself. See docs/access.md.\n\n"
    "Example:\n\n    conveyor tokens create --role deployer --env staging --description 'CI'",
    no_args_is_help=True,
)
access_app = typer.Typer(
    help="Who holds which role (viewer, deployer, approver, admin), on which environment. "
    "See docs/access.md.\n\n"
    "Example:\n\n    conveyor access grant alice deployer --env staging",
    no_args_is_help=True,
)
app.add_typer(tokens_app, name="tokens")
app.add_typer(access_app, name="access")

ROLES = "viewer, deployer, approver or admin"
RoleOpt = Annotated[
    str, typer.Option("--role", help=f"The token's role: {ROLES} (required).", show_default=False)
]
EnvScope = Annotated[
    str | None,
    typer.Option("--env", "-e", help="Only this environment (default: every environment)."),
]
UserArg = Annotated[str, typer.Argument(metavar="USER", help="The user name, e.g. alice.")]
RoleArg = Annotated[str, typer.Argument(metavar="ROLE", help=f"{ROLES}.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _role(value: str, option: str) -> Role:
    from conveyor.core.access import Role

    try:
        return Role(value.strip().lower())
    except ValueError:
        fail(f"{option}: unknown role {value!r}; use {ROLES}")


def _env(cfg: Config, env: str | None) -> str | None:
    """`--env`, checked against the environments conveyor.toml declares (None: every one)."""
    if env is None:
        return None
    known = sorted(cfg.environments)
    if env not in known:
        fail(
            f"--env: no environment {env!r} in {cfg.source}; declared: {', '.join(known) or 'none'}"
        )
    return env


def _setup(proj: Project) -> tuple[Config, str, AuditContext]:
    from conveyor.auth.service import AuditContext

    cfg = proj.config()
    return cfg, acting_user(proj), AuditContext(app=cfg.app.name, role="admin", source="local")


def _now() -> datetime:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _where(environment: str | None) -> str:
    return f"on {environment}" if environment else "on every environment"


def _confirm(question: str, needs: str) -> None:
    """A destructive step: asked on a terminal, else refused (exit 2) without --yes."""
    if not sys.stdin.isatty() or json_mode():
        fail(f"{needs} needs --yes (no terminal to ask on)")
    typer.confirm(question, abort=True)


# --- tokens -------------------------------------------------------------------------------------


@tokens_app.command("create", cls=Command)
def create(
    role: RoleOpt = "",
    env: EnvScope = None,
    user: Annotated[
        str | None,
        typer.Option("--user", help="Whose token it is (default: you). It carries their roles."),
    ] = None,
    expires: Annotated[
        str, typer.Option("--expires", help="When it stops working: 90d, 12h, 2w, or never.")
    ] = "90d",
    description: Annotated[
        str, typer.Option("--description", help="What it is for, shown in `tokens list`.")
    ] = "",
    json_out: JsonOpt = False,
) -> None:
    """Make an API token and print its secret once: it is stored only as a digest and cannot be
    shown again. A token carries at most its owner's roles. On a fresh install (nobody is admin
    yet) your own first `--role admin` token makes you admin on every environment.

    Example:

        conveyor tokens create --role deployer --env staging --expires 30d --description "CI"
    """
    from conveyor.auth import service

    if not role:
        fail(f"--role is required: {ROLES}")
    want = _role(role, "--role")
    try:
        lifetime = service.parse_expiry(expires)
    except ValueError as exc:
        fail(f"--expires: {exc}")
    proj = project()
    cfg, who, ctx = _setup(proj)
    scope = _env(cfg, env)
    store = proj.store()
    try:
        from conveyor.store.access import any_admin

        first = not cfg.access.admins and not any_admin(store)
        rec, whole = service.create_token(
            store,
            user if user is not None else who,
            want,
            scope,
            lifetime,
            description,
            who,
            _now(),
            cfg.access.admins,
            local=True,
            ctx=ctx,
        )
    except service.AccessError as exc:
        fail(str(exc))
    finally:
        store.close()
    note = "copy it now: it will not be shown again"
    bootstrap = first and rec.role == "admin" and rec.owner == who
    if json_out:
        emit_json(
            {"exit": 0, "token": whole, "note": note, "first_admin": bootstrap, **rec.to_json()}
        )
        return
    if bootstrap:
        print(f"{clean(who)} is now admin on every environment (the first admin)", file=sys.stderr)
    expiry = f"expires {when(rec.expires_at)}" if rec.expires_at else "never expires"
    print(
        f"token {rec.id} for {clean(rec.owner)}: {rec.role} {_where(rec.environment)}, "
        f"{expiry}; {note}",
        file=sys.stderr,
    )
    print(whole)  # alone on stdout, for `TOKEN=$(conveyor tokens create ...)`


@tokens_app.command("list", cls=Command)
def list_tokens(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's tokens.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List API tokens: id, owner, role, environment, created, expires, last use, revoked. Never
    a secret.

    Example:

        conveyor tokens list --user ci-bot --json
    """
    from conveyor.store import access as stored

    proj = project()
    store = proj.store()
    try:
        found = stored.list_tokens(store, user)
    finally:
        store.close()
    now = _now()
    if json_out:
        shown = [{**t.to_json(), "state": _state(t, now)} for t in found]
        emit_json({"exit": 0, "tokens": shown})
        return
    if not found:
        console.print("no tokens" + (f" of {clean(user)}" if user else ""), markup=False)
        return
    header = ("ID", "OWNER", "ROLE", "ENV", "CREATED", "EXPIRES", "LAST USED", "STATE")
    rows: list[tuple[str, ...]] = [
        header,
        *(
            (
                t.id,
                clean(t.owner),
                "session" if t.kind == "session" else str(t.role),
                t.environment or "*",
                when(t.created_at),
                when(t.expires_at) if t.expires_at else "never",
                when(t.last_used_at) + (f" from {t.last_used_from}" if t.last_used_from else ""),
                _state(t, now),
            )
            for t in found
        ),
    ]
    # Plain columns, never wrapped nor cut: an id is copied from here into `tokens revoke`.
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _state(t: TokenRecord, now: datetime) -> str:
    if t.revoked_at is not None:
        return f"revoked by {t.revoked_by} {when(t.revoked_at)}"
    return "expired" if t.expired(now) else "active"


@tokens_app.command("revoke", cls=Command)
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (tokens list).")],
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Revoke an API token: every request with it is refused from now on. Recorded in the audit
    log.

    Example:

        conveyor tokens revoke k3v9q2m4x8p1z7w5 --yes
    """
    from conveyor.auth import service
    from conveyor.store import access as stored

    proj = project()
    _, who, ctx = _setup(proj)
    store = proj.store()
    try:
        current = stored.get_token(store, token_id)
        if current is None:
            fail(str(service.UnknownToken(token_id)))
        if current.revoked_at is None and not yes:
            _confirm(
                f"Revoke token {token_id} of {current.owner} ({current.role} "
                f"{_where(current.environment)})?",
                "revoking a token",
            )
        was_revoked = current.revoked_at is not None
        try:
            rec = service.revoke_token(store, token_id, who, _now(), ctx=ctx)
        except service.UnknownToken as exc:
            fail(str(exc))
    finally:
        store.close()
    if json_out:
        emit_json({"exit": 0, "revoked": not was_revoked, "token": rec.to_json()})
    elif was_revoked:
        console.print(f"token {token_id} was already revoked", markup=False)
    else:
        console.print(f"✓ revoked token {token_id} of {clean(rec.owner)}", markup=False)


# --- access -------------------------------------------------------------------------------------


@access_app.command("grant", cls=Command)
def grant(user: UserArg, role: RoleArg, env: EnvScope = None, json_out: JsonOpt = False) -> None:
    """Give a user a role on one environment (--env) or on all. Their tokens may then carry it.
    Recorded in the audit log.

    Example:

        conveyor access grant alice approver --env production
    """
    from conveyor.auth import service

    want = _role(role, "ROLE")
    proj = project()
    cfg, who, ctx = _setup(proj)
    scope = _env(cfg, env)
    store = proj.store()
    try:
        rec, added = service.grant(store, user, want, scope, who, _now(), ctx=ctx)
    except service.AccessError as exc:
        fail(f"USER: {exc}")
    finally:
        store.close()
    if json_out:
        emit_json({"exit": 0, "added": added, "binding": rec.to_json()})
        return
    text = f"{clean(rec.subject)} is {rec.role} {_where(rec.environment)}"
    console.print(f"✓ {text}" if added else f"{text} already", markup=False)


@access_app.command("revoke", cls=Command)
def ungrant(
    user: UserArg,
    role: RoleArg,
    env: EnvScope = None,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Take a role back from a user; their tokens lose it at once. Recorded in the audit log.

    Example:

        conveyor access revoke alice deployer --env staging --yes
    """
    from conveyor.auth import service

    want = _role(role, "ROLE")
    proj = project()
    cfg, who, ctx = _setup(proj)
    scope = _env(cfg, env)
    if not yes:
        _confirm(
            f"Take {want} {_where(scope)} back from {user}? Their tokens lose it at once",
            "taking a role back",
        )
    store = proj.store()
    try:
        gone = service.ungrant(store, user, want, scope, who, _now(), ctx=ctx)
    except service.AccessError as exc:
        fail(str(exc))
    finally:
        store.close()
    if json_out:
        emit_json({"exit": 0, "removed": gone.to_json()})
        return
    console.print(f"✓ {clean(user)} is no longer {want} {_where(scope)}", markup=False)
    if user in cfg.access.admins:
        console.print(
            f"note: {clean(user)} is still admin everywhere through [access] admins in "
            f"{cfg.source}",
            markup=False,
        )


@access_app.command("list", cls=Command)
def list_access(json_out: JsonOpt = False) -> None:
    """List who holds which role where: the bindings in the database and `[access] admins`.

    Example:

        conveyor access list --json
    """
    from conveyor.store import access as stored

    proj = project()
    cfg = proj.config()
    store = proj.store()
    try:
        found = stored.list_bindings(store)
    finally:
        store.close()
    rows: list[dict[str, Any]] = [{**b.to_json(), "source": "database"} for b in found]
    rows += [
        {"subject": name, "role": "admin", "environment": None, "source": "config"}
        for name in cfg.access.admins
    ]
    if json_out:
        emit_json({"exit": 0, "bindings": rows})
        return
    if not rows:
        console.print(
            "nobody holds a role yet: `conveyor tokens create --role admin` makes you the first "
            "admin",
            markup=False,
        )
        return
    for row in rows:
        origin = "[access] admins" if row["source"] == "config" else _granted(row, found)
        console.print(
            f"{clean(row['subject'])}: {row['role']} {_where(row['environment'])} ({origin})",
            markup=False,
            soft_wrap=True,
        )


def _granted(row: dict[str, Any], found: list[BindingRecord]) -> str:
    rec = next(b for b in found if b.id == row.get("id"))
    return f"granted by {clean(rec.created_by)} {when(rec.created_at)}"
