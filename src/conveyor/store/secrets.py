"""Secrets in the state database: encrypted versions, the key check, the break-glass cache.

Only ciphertexts come in and out of here; conveyor.secrets.local encrypts and decrypts. A new
version is numbered, sealed (its number is part of what is authenticated) and recorded with its
audit entry in one write transaction, so two writers cannot take the same number and no version
exists that the audit log does not mention. Nothing is ever rewritten: a removal is a new
version, a tombstone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from conveyor.store import audit
from conveyor.store.db import Store, serialize
from conveyor.store.models import SecretCacheRow, SecretKeyringRow, SecretVersionRow

# pg_advisory_xact_lock key of secret writes ("secr").
_SECRETS_KEY = 0x73656372
ACTIONS = frozenset({"set", "rotate", "import", "rm"})

# Given the version number a write gets, its (nonce, ciphertext); None writes a tombstone.
Sealer = Callable[[int], tuple[bytes, bytes]] | None


@dataclass(frozen=True)
class KeyringRecord:
    app: str
    kind: str  # key | passphrase
    salt: str | None  # base64, for a passphrase
    check: str
    created_at: datetime


@dataclass(frozen=True)
class SecretRecord:
    app: str
    environment: str
    name: str
    version: int
    nonce: bytes | None = None
    ciphertext: bytes | None = None
    removed: bool = False
    action: str = "set"
    created_by: str = ""
    created_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """What may be shown of it: never the ciphertext."""
        return {
            "name": self.name,
            "environment": self.environment,
            "version": self.version,
            "removed": self.removed,
            "action": self.action,
            "by": self.created_by,
            "at": self.created_at.isoformat() if self.created_at else None,
        }


@dataclass(frozen=True)
class CachedRecord:
    app: str
    environment: str
    name: str
    provider: str
    version: str
    nonce: bytes
    ciphertext: bytes
    fetched_at: datetime


def _secret(row: SecretVersionRow) -> SecretRecord:
    return SecretRecord(
        app=row.app,
        environment=row.environment,
        name=row.name,
        version=row.version,
        nonce=row.nonce,
        ciphertext=row.ciphertext,
        removed=row.removed,
        action=row.action,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def _keyring(row: SecretKeyringRow) -> KeyringRecord:
    return KeyringRecord(row.app, row.kind, row.salt, row.check, row.created_at)


class SecretStore:
    """The secrets of one state store (same database, same transaction rules)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # the key check

    def keyring(self, app: str) -> KeyringRecord | None:
        with self._store.reading() as session:
            row = session.get(SecretKeyringRow, app)
            return _keyring(row) if row is not None else None

    def init_keyring(self, want: KeyringRecord) -> KeyringRecord:
        """Record `want` as the app's key unless one is recorded already; the one recorded."""
        try:
            with self._store.writing() as session:
                row = session.get(SecretKeyringRow, want.app)
                if row is None:
                    row = SecretKeyringRow(
                        app=want.app,
                        kind=want.kind,
                        salt=want.salt,
                        check=want.check,
                        created_at=want.created_at,
                    )
                    session.add(row)
                    session.flush()
                return _keyring(row)
        except IntegrityError:  # another process recorded one first (PostgreSQL)
            found = self.keyring(want.app)
            assert found is not None
            return found

    # versions

    def write(
        self,
        app: str,
        environment: str,
        items: Sequence[tuple[str, Sealer]],
        *,
        action: str,
        actor: str,
        at: datetime,
        detail: str = "",
    ) -> list[SecretRecord]:
        """A new version of each named secret, and one audit entry naming them and their new
        versions, in one transaction: all of them or none."""
        if action not in ACTIONS:
            raise ValueError(f"invalid secret action {action!r}")
        written: list[SecretRecord] = []
        with self._store.writing() as session:
            serialize(session, _SECRETS_KEY)
            for name, sealer in items:
                last = session.scalar(
                    select(func.max(SecretVersionRow.version)).where(
                        SecretVersionRow.app == app,
                        SecretVersionRow.environment == environment,
                        SecretVersionRow.name == name,
                    )
                )
                version = (last or 0) + 1
                nonce, ciphertext = sealer(version) if sealer is not None else (None, None)
                row = SecretVersionRow(
                    app=app,
                    environment=environment,
                    name=name,
                    version=version,
                    nonce=nonce,
                    ciphertext=ciphertext,
                    removed=sealer is None,
                    action=action,
                    created_by=actor,
                    created_at=at,
                )
                session.add(row)
                session.flush()
                written.append(_secret(row))
            audit.append(
                session,
                at=at,
                actor=actor,
                action=f"secret.{action}",
                app=app,
                environment=environment,
                target=", ".join(r.name for r in written),
                outcome="ok",
                detail=detail,
                data={"versions": {r.name: r.version for r in written}},
            )
        return written

    def get(
        self, app: str, environment: str, name: str, version: int | None = None
    ) -> SecretRecord | None:
        """The given version, else the newest one (a tombstone, if it was removed last)."""
        query = select(SecretVersionRow).where(
            SecretVersionRow.app == app,
            SecretVersionRow.environment == environment,
            SecretVersionRow.name == name,
        )
        if version is not None:
            query = query.where(SecretVersionRow.version == version)
        with self._store.reading() as session:
            row = session.scalars(query.order_by(SecretVersionRow.version.desc()).limit(1)).first()
            return _secret(row) if row is not None else None

    def history(self, app: str, environment: str, name: str) -> list[SecretRecord]:
        """Every version of `name`, oldest first."""
        with self._store.reading() as session:
            rows = session.scalars(
                select(SecretVersionRow)
                .where(
                    SecretVersionRow.app == app,
                    SecretVersionRow.environment == environment,
                    SecretVersionRow.name == name,
                )
                .order_by(SecretVersionRow.version)
            )
            return [_secret(row) for row in rows]

    def latest(self, app: str, environment: str) -> list[SecretRecord]:
        """The newest version of every name of `environment` (tombstones too), by name."""
        newest = (
            select(
                SecretVersionRow.name,
                func.max(SecretVersionRow.version).label("version"),
            )
            .where(SecretVersionRow.app == app, SecretVersionRow.environment == environment)
            .group_by(SecretVersionRow.name)
            .subquery()
        )
        with self._store.reading() as session:
            rows = session.scalars(
                select(SecretVersionRow)
                .join(
                    newest,
                    (SecretVersionRow.name == newest.c.name)
                    & (SecretVersionRow.version == newest.c.version),
                )
                .where(SecretVersionRow.app == app, SecretVersionRow.environment == environment)
                .order_by(SecretVersionRow.name)
            )
            return [_secret(row) for row in rows]

    # the break-glass cache

    def put_cached(self, rec: CachedRecord) -> None:
        with self._store.writing() as session:
            session.merge(
                SecretCacheRow(
                    app=rec.app,
                    environment=rec.environment,
                    name=rec.name,
                    provider=rec.provider,
                    version=rec.version,
                    nonce=rec.nonce,
                    ciphertext=rec.ciphertext,
                    fetched_at=rec.fetched_at,
                )
            )

    def cached(self, app: str, environment: str, name: str) -> list[CachedRecord]:
        """The cached copies of `name` (one per remote provider), the newest first."""
        with self._store.reading() as session:
            rows = session.scalars(
                select(SecretCacheRow)
                .where(
                    SecretCacheRow.app == app,
                    SecretCacheRow.environment == environment,
                    SecretCacheRow.name == name,
                )
                .order_by(SecretCacheRow.fetched_at.desc())
            )
            return [
                CachedRecord(
                    r.app,
                    r.environment,
                    r.name,
                    r.provider,
                    r.version,
                    r.nonce,
                    r.ciphertext,
                    r.fetched_at,
                )
                for r in rows
            ]
