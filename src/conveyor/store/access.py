"""Access control in the state database: API tokens, role bindings, idempotency keys.

Functions take the Store and run one short transaction each, returning frozen records. A change
that the audit log must mention (a token made or revoked, a role granted or taken back) takes
the entry as `audit_entry` (the keyword arguments of conveyor.store.audit.append) and appends it
in the same transaction: no token exists that the log does not mention. conveyor.auth.service
decides what to write; this module only stores it.

Tokens are stored by their public id with the SHA-256 digest of their secret; the secret itself
never reaches the database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from conveyor.core.access import Binding, Role
from conveyor.store import audit
from conveyor.store.db import Store, serialize
from conveyor.store.models import ApiTokenRow, IdempotencyKeyRow, RoleBindingRow

# pg_advisory_xact_lock key of binding changes ("bind"): the unique constraint cannot see two
# bindings on every environment (NULL) as the same, so adding one checks first, serialized.
_BINDINGS_KEY = 0x62696E64
# A token's last use is written at most this often: not one write per request.
TOUCH_INTERVAL = timedelta(seconds=60)
# Token kinds: narrowed to its role and environment, or a browser session (every role its
# owner holds; made by an OIDC login).
API = "api"
SESSION = "session"


@dataclass(frozen=True)
class TokenRecord:
    id: str  # public: shown in listings and the audit log
    owner: str
    role: Role
    environment: str | None  # None: every environment
    digest: str  # sha256 hex of the secret (conveyor.auth.tokens); never shown
    description: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None  # None: never
    last_used_at: datetime | None = None
    last_used_from: str | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    kind: str = API  # API or SESSION (then `role` is unused: the owner's roles apply)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def to_json(self) -> dict[str, Any]:
        """What may be shown of it: everything but the digest."""
        return {
            "id": self.id,
            "owner": self.owner,
            "role": str(self.role),
            "environment": self.environment,
            "description": self.description,
            "created_at": _iso(self.created_at),
            "created_by": self.created_by,
            "expires_at": _iso(self.expires_at),
            "last_used_at": _iso(self.last_used_at),
            "last_used_from": self.last_used_from,
            "revoked_at": _iso(self.revoked_at),
            "revoked_by": self.revoked_by,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class BindingRecord:
    id: int
    subject: str
    role: Role
    environment: str | None  # None: every environment
    created_at: datetime
    created_by: str

    def binding(self) -> Binding:
        return Binding(self.subject, self.role, self.environment)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject": self.subject,
            "role": str(self.role),
            "environment": self.environment,
            "created_at": _iso(self.created_at),
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class IdempotencyRecord:
    actor: str
    key: str
    environment: str
    request_hash: str  # of the request's method, path and body: the same key with another
    # request is the client's mistake (the API answers 422)
    deployment_id: int | None
    response: dict[str, Any]
    created_at: datetime


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _token(row: ApiTokenRow) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        owner=row.owner,
        role=Role(row.role),
        environment=row.environment,
        digest=row.digest,
        description=row.description,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        last_used_from=row.last_used_from,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        kind=row.kind,
    )


def _binding(row: RoleBindingRow) -> BindingRecord:
    return BindingRecord(
        id=row.id,
        subject=row.subject,
        role=Role(row.role),
        environment=row.environment,
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _audit(session: Session, entry: Mapping[str, Any] | None) -> None:
    if entry is not None:
        audit.append(session, **entry)


# --- tokens ---------------------------------------------------------------------------------


def add_token(
    store: Store, rec: TokenRecord, *, audit_entry: Mapping[str, Any] | None = None
) -> TokenRecord:
    """Store a new token (its id must be new: ids are random, a clash is an IntegrityError)."""
    with store.writing() as session:
        session.add(ApiTokenRow(**{**asdict(rec), "role": str(rec.role)}))
        session.flush()
        _audit(session, audit_entry)
    return rec


def get_token(store: Store, token_id: str) -> TokenRecord | None:
    with store.reading() as session:
        row = session.get(ApiTokenRow, token_id)
        return _token(row) if row is not None else None


def list_tokens(store: Store, owner: str | None = None) -> list[TokenRecord]:
    """Every token (of `owner`), revoked and expired ones too, oldest first."""
    query = select(ApiTokenRow)
    if owner is not None:
        query = query.where(ApiTokenRow.owner == owner)
    with store.reading() as session:
        rows = session.scalars(query.order_by(ApiTokenRow.created_at, ApiTokenRow.id))
        return [_token(row) for row in rows]


def revoke_token(
    store: Store,
    token_id: str,
    by: str,
    at: datetime,
    *,
    audit_entry: Mapping[str, Any] | None = None,
) -> bool:
    """Revoke the token; False (and no audit entry) when there is none or it was revoked already."""
    with store.writing() as session:
        result = session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.id == token_id, ApiTokenRow.revoked_at.is_(None))
            .values(revoked_at=at, revoked_by=by)
        )
        if not getattr(result, "rowcount", 0):
            return False
        _audit(session, audit_entry)
    return True


def touch_token(store: Store, token_id: str, at: datetime, source: str) -> bool:
    """Record a use of the token, unless one was recorded less than TOUCH_INTERVAL before `at`
    (False then): a busy client costs one write a minute, not one a request."""
    with store.writing() as session:
        result = session.execute(
            update(ApiTokenRow)
            .where(
                ApiTokenRow.id == token_id,
                or_(
                    ApiTokenRow.last_used_at.is_(None),
                    ApiTokenRow.last_used_at <= at - TOUCH_INTERVAL,
                ),
            )
            .values(last_used_at=at, last_used_from=source[:200] or None)
        )
        return bool(getattr(result, "rowcount", 0))


# --- bindings -------------------------------------------------------------------------------


def _find_binding(
    session: Session, subject: str, role: Role, environment: str | None
) -> RoleBindingRow | None:
    env_match = (
        RoleBindingRow.environment.is_(None)
        if environment is None
        else RoleBindingRow.environment == environment
    )
    return session.scalars(
        select(RoleBindingRow).where(
            RoleBindingRow.subject == subject, RoleBindingRow.role == str(role), env_match
        )
    ).first()


def add_binding(
    store: Store,
    subject: str,
    role: Role,
    environment: str | None,
    *,
    by: str,
    at: datetime,
    audit_entry: Mapping[str, Any] | None = None,
) -> tuple[BindingRecord, bool]:
    """Give `subject` the role; (the binding, True) when added, (the one there was, False) when
    they held it already (then no audit entry is written)."""
    with store.writing() as session:
        serialize(session, _BINDINGS_KEY)
        found = _find_binding(session, subject, role, environment)
        if found is not None:
            return _binding(found), False
        row = RoleBindingRow(
            subject=subject, role=str(role), environment=environment, created_at=at, created_by=by
        )
        session.add(row)
        session.flush()
        _audit(session, audit_entry)
        return _binding(row), True


def add_first_admin(
    store: Store,
    subject: str,
    *,
    at: datetime,
    audit_entry: Mapping[str, Any] | None = None,
) -> BindingRecord | None:
    """Make `subject` admin on every environment if, in this same transaction, nobody holds
    admin anywhere; None when someone does (the bootstrap is over)."""
    with store.writing() as session:
        serialize(session, _BINDINGS_KEY)
        admin = session.scalars(
            select(RoleBindingRow.id).where(RoleBindingRow.role == str(Role.admin)).limit(1)
        ).first()
        if admin is not None:
            return None
        row = RoleBindingRow(
            subject=subject,
            role=str(Role.admin),
            environment=None,
            created_at=at,
            created_by=subject,
        )
        session.add(row)
        session.flush()
        _audit(session, audit_entry)
        return _binding(row)


def remove_binding(
    store: Store,
    subject: str,
    role: Role,
    environment: str | None,
    *,
    audit_entry: Mapping[str, Any] | None = None,
) -> BindingRecord | None:
    """Take the role back; the binding removed, or None (no audit entry) when there was none."""
    with store.writing() as session:
        serialize(session, _BINDINGS_KEY)
        row = _find_binding(session, subject, role, environment)
        if row is None:
            return None
        gone = _binding(row)
        session.delete(row)
        session.flush()
        _audit(session, audit_entry)
        return gone


def replace_bindings(
    store: Store,
    subject: str,
    source: str,
    want: Mapping[tuple[Role, str | None], str],
    *,
    at: datetime,
    entry: Callable[[str, BindingRecord], Mapping[str, Any]],
) -> tuple[list[BindingRecord], list[BindingRecord]]:
    """Make `subject`'s bindings that `source` gave (created_by "<source>:<why>") exactly `want`
    ((role, environment) -> why, e.g. the group that gives it), in one transaction; bindings
    made otherwise (by hand) are left alone. `entry(action, binding)` makes the audit entry of
    each change ("access.grant" or "access.revoke"). Returns (added, removed)."""
    prefix = f"{source}:"
    added: list[BindingRecord] = []
    removed: list[BindingRecord] = []
    with store.writing() as session:
        serialize(session, _BINDINGS_KEY)
        rows = list(
            session.scalars(select(RoleBindingRow).where(RoleBindingRow.subject == subject))
        )
        held = {(Role(r.role), r.environment) for r in rows}
        for row in rows:
            if row.created_by.startswith(prefix) and (Role(row.role), row.environment) not in want:
                gone = _binding(row)
                session.delete(row)
                session.flush()
                audit.append(session, **entry("access.revoke", gone))
                removed.append(gone)
        for (role, environment), why in want.items():
            if (role, environment) in held:
                continue
            row = RoleBindingRow(
                subject=subject,
                role=str(role),
                environment=environment,
                created_at=at,
                created_by=f"{prefix}{why}",
            )
            session.add(row)
            session.flush()
            new = _binding(row)
            audit.append(session, **entry("access.grant", new))
            added.append(new)
    return added, removed


def list_bindings(store: Store, subject: str | None = None) -> list[BindingRecord]:
    """Every binding (of `subject`), by subject, then in the order they were made."""
    query = select(RoleBindingRow)
    if subject is not None:
        query = query.where(RoleBindingRow.subject == subject)
    with store.reading() as session:
        rows = session.scalars(query.order_by(RoleBindingRow.subject, RoleBindingRow.id))
        return [_binding(row) for row in rows]


def any_admin(store: Store) -> bool:
    """Whether anyone holds admin (anywhere) through a binding in the database."""
    with store.reading() as session:
        return (
            session.scalars(
                select(RoleBindingRow.id).where(RoleBindingRow.role == str(Role.admin)).limit(1)
            ).first()
            is not None
        )


# --- idempotency keys (the API's POST /environments/{env}/deployments) ------------------------


def _idempotent(row: IdempotencyKeyRow) -> IdempotencyRecord:
    return IdempotencyRecord(
        actor=row.actor,
        key=row.key,
        environment=row.environment,
        request_hash=row.request_hash,
        deployment_id=row.deployment_id,
        response=dict(row.response),
        created_at=row.created_at,
    )


def get_idempotent(store: Store, actor: str, key: str) -> IdempotencyRecord | None:
    with store.reading() as session:
        row = session.get(IdempotencyKeyRow, (actor, key))
        return _idempotent(row) if row is not None else None


def put_idempotent(store: Store, rec: IdempotencyRecord) -> IdempotencyRecord:
    """Remember `rec`; when (actor, key) was remembered already (two requests racing), the first
    one stays and is returned: compare its request_hash and answer with its response."""
    try:
        with store.writing() as session:
            found = session.get(IdempotencyKeyRow, (rec.actor, rec.key))
            if found is not None:
                return _idempotent(found)
            session.add(IdempotencyKeyRow(**{**asdict(rec), "response": dict(rec.response)}))
            session.flush()
            return rec
    except IntegrityError:  # another process inserted it between our read and write (PostgreSQL)
        first = get_idempotent(store, rec.actor, rec.key)
        assert first is not None
        return first
