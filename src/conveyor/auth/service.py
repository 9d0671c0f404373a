"""Access control's interface for the API and the CLI: authenticate a token, make and revoke
tokens, grant and take back roles.

What this module checks: that a token is real, current and its owner's; that a new token does
not exceed what its owner holds; the first admin (bootstrap). What it does not: whether the
*caller* may manage someone else's tokens or bindings — that is a decision on the caller's
Principal (`decide(principal, "tokens.manage", None)`), taken by the API before it calls here;
the local CLI has full control.

Every change is written with its audit entry in one transaction (actions `token.create`,
`token.revoke`, `access.grant`, `access.revoke`); no entry holds a secret or a digest.
Nothing here reads the clock: `now` comes in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from conveyor.core.access import Binding, Principal, Role, Scope, effective_roles
from conveyor.identity import IdentityError, check_name
from conveyor.store import access as stored
from conveyor.store.access import BindingRecord, TokenRecord
from conveyor.store.db import Store

from . import tokens

DEFAULT_EXPIRY = timedelta(days=90)
MAX_DESCRIPTION = 500


_EXPIRY_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60}
_EXPIRY_RE = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?")
NEVER = "never"


def parse_expiry(value: str) -> timedelta | None:
    """A token's lifetime as written on a command line or in a request: "90d", "12h", "2w",
    "1d12h", or "never" (None: the token does not expire). ValueError says what is accepted."""
    text = value.strip().lower()
    if text == NEVER:
        return None
    match = _EXPIRY_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"invalid expiry {value!r}: use 90d, 12h, 2w, 1d12h or never")
    seconds = sum(
        int(n) * _EXPIRY_UNITS[unit]
        for n, unit in zip(match.groups(), "wdhm", strict=True)
        if n is not None
    )
    if seconds <= 0:
        raise ValueError(f"invalid expiry {value!r}: it must be longer than zero, or never")
    return timedelta(seconds=seconds)


class Unauthenticated(Exception):
    """A request's token does not name anyone: missing, malformed, unknown, wrong secret,
    expired or revoked. `reason` says which, and never holds the token's secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AccessError(Exception):
    """A change that is refused; the message says what would allow it."""


class UnknownToken(AccessError, LookupError):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"no token with id {token_id}: `conveyor tokens list` shows them")
        self.token_id = token_id


@dataclass(frozen=True)
class AuditContext:
    """Who acts and from where, as the audit log names them. The CLI passes the app's name and
    nothing else; the API adds the caller's token, the role they act in and their address."""

    app: str
    token_id: str | None = None  # the acting request's token, not the one acted on
    role: str | None = None  # the role the action was allowed in
    source: str = ""  # the client's address


def admin_everywhere(subject: str) -> Binding:
    return Binding(subject, Role.admin, None)


def bindings_of(store: Store, admins: Sequence[str], subject: str) -> tuple[Binding, ...]:
    """`subject`'s current bindings: those in the database, and admin on every environment when
    the configuration's `[access] admins` names them."""
    found = tuple(rec.binding() for rec in stored.list_bindings(store, subject))
    if subject in admins:
        found = (*found, admin_everywhere(subject))
    return found


def authenticate(
    store: Store, admins: Sequence[str], token: str | None, now: datetime, source: str = ""
) -> Principal:
    """The Principal that `token` (the whole `cvy_<id>_<secret>` string) acts for, with its
    owner's bindings as they are now; Unauthenticated saying why not. Records the token's use
    (at most once a minute per token: stored.TOUCH_INTERVAL)."""
    if token is None or not token.strip():
        raise Unauthenticated("no token given: send `Authorization: Bearer cvy_...`")
    try:
        parsed = tokens.parse(token)
    except tokens.MalformedToken as exc:
        raise Unauthenticated(f"malformed token: {exc}") from None
    rec = stored.get_token(store, parsed.id)
    if rec is None:
        raise Unauthenticated(f"unknown token {parsed.id}")
    # The secret first: whether a token is revoked or expired is told only to its holder.
    if not tokens.matches(parsed.secret, rec.digest):
        raise Unauthenticated(f"wrong secret for token {rec.id}")
    if rec.revoked_at is not None:
        raise Unauthenticated(
            f"token {rec.id} was revoked by {rec.revoked_by} at {rec.revoked_at.isoformat()}"
        )
    if rec.expired(now):
        assert rec.expires_at is not None
        raise Unauthenticated(f"token {rec.id} expired at {rec.expires_at.isoformat()}")
    if rec.last_used_at is None or rec.last_used_at <= now - stored.TOUCH_INTERVAL:
        stored.touch_token(store, rec.id, now, source)
    session = rec.kind == stored.SESSION  # a browser's login: every role its owner holds
    return Principal(
        subject=rec.owner,
        bindings=bindings_of(store, admins, rec.owner),
        scope=None if session else Scope(rec.role, rec.environment),
        token_id=rec.id,
        via="session" if session else "token",
    )


def local_principal(store: Store, admins: Sequence[str], user: str) -> Principal:
    """Someone acting on this machine (the CLI): whoever can open the state database already
    controls everything, so they act as admin on every environment, unnarrowed."""
    return Principal(
        subject=user, bindings=(admin_everywhere(user),), scope=None, token_id=None, via="local"
    )


def _where(environment: str | None) -> str:
    return f"on {environment}" if environment is not None else "on every environment"


def _grant_hint(owner: str, role: Role, environment: str | None) -> str:
    env = f" --env {environment}" if environment is not None else ""
    return f"`conveyor access grant {owner} {role}{env}`"


def _entry(
    ctx: AuditContext,
    actor: str,
    at: datetime,
    action: str,
    environment: str | None,
    target: str,
    detail: str,
    data: dict[str, Any],
) -> dict[str, Any]:
    """An audit entry for an access change; `data` names tokens by id only."""
    return {
        "at": at,
        "actor": actor,
        "action": action,
        "app": ctx.app,
        "environment": environment,
        "target": target,
        "outcome": "ok",
        "detail": detail,
        "data": {
            **data,
            "actor_token": ctx.token_id,
            "actor_role": ctx.role,
            "source": ctx.source or None,
        },
    }


def _name(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except IdentityError as exc:
        raise AccessError(str(exc)) from None


def create_token(
    store: Store,
    owner: str,
    role: Role,
    environment: str | None,
    expires_in: timedelta | None,
    description: str,
    created_by: str,
    now: datetime,
    admins: Sequence[str],
    *,
    local: bool,
    ctx: AuditContext,
) -> tuple[TokenRecord, str]:
    """A new token for `owner` with `role` on `environment` (None: all), expiring `expires_in`
    after `now` (None: never; callers default to DEFAULT_EXPIRY). Returns the record and the
    whole token string: the only time the secret exists outside its holder.

    Refused (AccessError) when `owner` does not hold `role` there. The bootstrap: on this machine
    (`local`), while nobody is admin (no admin binding, no `[access] admins`), a user making an
    admin token for themselves first becomes admin on every environment (recorded)."""
    owner = _name(owner, "the token's owner")
    created_by = _name(created_by, "the creating user")
    role = Role(role)
    description = description.strip()
    if len(description) > MAX_DESCRIPTION:
        raise AccessError(f"the description is longer than {MAX_DESCRIPTION} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in description):
        raise AccessError("the description holds a control character: use one plain line")
    if expires_in is not None and expires_in <= timedelta(0):
        raise AccessError("a token's expiry must be in the future")
    if (
        local
        and role is Role.admin
        and owner == created_by
        and not admins
        and not stored.any_admin(store)
    ):
        stored.add_first_admin(
            store,
            owner,
            at=now,
            audit_entry=_entry(
                ctx,
                owner,
                now,
                "access.grant",
                None,
                owner,
                "first admin: nobody was admin, and a local user made an admin token",
                {"subject": owner, "role": "admin", "bootstrap": True},
            ),
        )
    held = effective_roles(
        Principal(owner, bindings_of(store, admins, owner), None, via="local"), environment
    )
    if role not in held:
        raise AccessError(
            f"{owner} does not hold the {role} role {_where(environment)}, and a token carries "
            f"at most its owner's roles: an admin can grant it first with "
            f"{_grant_hint(owner, role, environment)}"
        )
    token_id, secret, whole = tokens.new_token()
    rec = TokenRecord(
        id=token_id,
        owner=owner,
        role=role,
        environment=environment,
        digest=tokens.digest(secret),
        description=description,
        created_at=now,
        created_by=created_by,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    stored.add_token(
        store,
        rec,
        audit_entry=_entry(
            ctx,
            created_by,
            now,
            "token.create",
            environment,
            token_id,
            f"{role} token for {owner} {_where(environment)}",
            {
                "token_id": token_id,
                "owner": owner,
                "role": str(role),
                "expires_at": rec.expires_at.isoformat() if rec.expires_at else None,
                "description": description,
            },
        ),
    )
    return rec, whole


SESSION_LIFETIME = timedelta(hours=12)


def start_session(
    store: Store,
    subject: str,
    admins: Sequence[str],
    now: datetime,
    *,
    how: str,
    ctx: AuditContext,
    lifetime: timedelta = SESSION_LIFETIME,
) -> tuple[TokenRecord, str]:
    """A browser session for `subject`, who logged in `how` (e.g. "oidc"): a token of kind
    "session" that carries every role its owner holds at each request, for `lifetime`. Refused
    (AccessError) when they hold no role at all. Its string is the session cookie's value."""
    subject = _name(subject, "the user")
    if not bindings_of(store, admins, subject):
        raise AccessError(
            f"{subject} holds no role on any environment: an admin can grant one with "
            f"`conveyor access grant {subject} viewer`"
        )
    token_id, secret, whole = tokens.new_token()
    rec = TokenRecord(
        id=token_id,
        owner=subject,
        role=Role.viewer,  # unused for a session: the owner's bindings decide
        environment=None,
        digest=tokens.digest(secret),
        description=f"browser session ({how} login)",
        created_at=now,
        created_by=subject,
        expires_at=now + lifetime,
        kind=stored.SESSION,
    )
    stored.add_token(
        store,
        rec,
        audit_entry=_entry(
            ctx,
            subject,
            now,
            "login",
            None,
            token_id,
            f"{how} login: a session until {rec.expires_at}",
            {"token_id": token_id, "owner": subject, "how": how},
        ),
    )
    return rec, whole


def revoke_token(
    store: Store, token_id: str, by: str, now: datetime, *, ctx: AuditContext
) -> TokenRecord:
    """Revoke the token (it fails authentication from now on); the record as it is after.
    UnknownToken when there is none; a token revoked already stays as it was (no new entry)."""
    rec = stored.get_token(store, token_id)
    if rec is None:
        raise UnknownToken(token_id)
    if rec.revoked_at is not None:
        return rec
    stored.revoke_token(
        store,
        token_id,
        by,
        now,
        audit_entry=_entry(
            ctx,
            by,
            now,
            "token.revoke",
            rec.environment,
            token_id,
            f"{rec.role} token of {rec.owner}",
            {"token_id": token_id, "owner": rec.owner, "role": str(rec.role)},
        ),
    )
    after = stored.get_token(store, token_id)
    assert after is not None
    return after


def grant(
    store: Store,
    subject: str,
    role: Role,
    environment: str | None,
    by: str,
    now: datetime,
    *,
    ctx: AuditContext,
) -> tuple[BindingRecord, bool]:
    """Give `subject` `role` on `environment` (None: all): (the binding, whether it is new)."""
    subject = _name(subject, "the user")
    role = Role(role)
    return stored.add_binding(
        store,
        subject,
        role,
        environment,
        by=by,
        at=now,
        audit_entry=_entry(
            ctx,
            by,
            now,
            "access.grant",
            environment,
            subject,
            f"{role} {_where(environment)} to {subject}",
            {"subject": subject, "role": str(role)},
        ),
    )


def ungrant(
    store: Store,
    subject: str,
    role: Role,
    environment: str | None,
    by: str,
    now: datetime,
    *,
    ctx: AuditContext,
) -> BindingRecord:
    """Take `role` on `environment` back from `subject`: their tokens lose it at once. The binding
    removed; AccessError when there was no such binding (it says which ones there are)."""
    role = Role(role)
    gone = stored.remove_binding(
        store,
        subject,
        role,
        environment,
        audit_entry=_entry(
            ctx,
            by,
            now,
            "access.revoke",
            environment,
            subject,
            f"{role} {_where(environment)} from {subject}",
            {"subject": subject, "role": str(role)},
        ),
    )
    if gone is None:
        held = [f"{b.role} {_where(b.environment)}" for b in stored.list_bindings(store, subject)]
        have = "; ".join(held) if held else "no binding at all"
        raise AccessError(
            f"{subject} holds no {role} binding {_where(environment)} (they hold: {have})"
        )
    return gone
