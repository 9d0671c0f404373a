"""ORM tables of the state store.

These classes never leave `conveyor.store`: `Store` converts rows into frozen records so callers
cannot lazily load, mutate or outlive a session by accident. The Alembic migrations in
`store/alembic/versions/` must describe exactly these tables (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is timezone-aware UTC in Python on every backend.

    PostgreSQL keeps the offset (timestamptz); SQLite stores text without one, so values are
    converted to UTC before they are written and marked UTC again when they are read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive datetime is ambiguous (local time? UTC?): refuse it rather than guess.
            raise ValueError(f"naive datetime {value.isoformat()} given to the store; use UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ReleaseRow(Base):
    __tablename__ = "releases"
    __table_args__ = (
        UniqueConstraint("app", "version", name="uq_releases_app_version"),
        Index("ix_releases_app_created", "app", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    commit: Mapped[str | None] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        # Serves list_deployments (newest first) and in_progress for one app+environment.
        Index("ix_deployments_app_env_id", "app", "environment", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    environment: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(Text, default="")
    previous_version: Mapped[str | None] = mapped_column(String(64))


class EventRow(Base):
    __tablename__ = "deployment_events"
    __table_args__ = (Index("ix_deployment_events_deployment_id", "deployment_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("deployments.id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class InstanceRow(Base):
    __tablename__ = "instances"

    app: Mapped[str] = mapped_column(String(200), primary_key=True)
    environment: Mapped[str] = mapped_column(String(200), primary_key=True)
    service: Mapped[str] = mapped_column(String(200), primary_key=True)
    color: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(16))
    # Which runtime started it, and its handle there (conveyor.runtimes.base.Handle as JSON).
    runtime: Mapped[str] = mapped_column(String(32))
    handle: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    standby_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deployment_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("deployments.id", ondelete="SET NULL")
    )


# --- promotion facts (conveyor.store.facts) ------------------------------------------------------


class CheckResultRow(Base):
    __tablename__ = "check_results"
    __table_args__ = (Index("ix_check_results_app_version", "app", "version", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    passed: Mapped[bool] = mapped_column(Boolean)
    url: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApprovalRow(Base):
    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_app_environment", "app", "environment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    environment: Mapped[str] = mapped_column(String(200))
    actor: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(16))  # approve | reject
    comment: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    withdrawn_by: Mapped[str | None] = mapped_column(String(200))


class ApprovalWithdrawalRow(Base):
    """One approval withdrawn (FactStore.withdraw), in the order withdrawals were written: the
    event stream reads new withdrawals by this id, as it reads new approvals by theirs."""

    __tablename__ = "approval_withdrawals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    approval_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("approvals.id", ondelete="CASCADE")
    )
    app: Mapped[str] = mapped_column(String(200))
    withdrawn_by: Mapped[str] = mapped_column(String(200))
    withdrawn_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeploymentRequestRow(Base):
    """A deploy asked for through the API and refused only for missing approvals: it waits in
    the approvals inbox until it is deployed, rejected or withdrawn (conveyor.store.requests)."""

    __tablename__ = "deployment_requests"
    __table_args__ = (Index("ix_deployment_requests_app_state", "app", "state", "environment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    environment: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str] = mapped_column(String(200))
    token_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # waiting | started | rejected
    deployment_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReleaseTagRow(Base):
    __tablename__ = "release_tags"

    app: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag: Mapped[str] = mapped_column(String(250), primary_key=True)


class EnvironmentLockRow(Base):
    """Who holds an environment: a deployment's lease, or a lock taken by hand (no lease)."""

    __tablename__ = "environment_locks"

    app: Mapped[str] = mapped_column(String(200), primary_key=True)
    environment: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "operation" (held by an agent) or "manual"
    what: Mapped[str] = mapped_column(Text)  # "deploy of v2", or the reason given by hand
    holder: Mapped[str] = mapped_column(String(200))  # the user it is held for
    owner: Mapped[str] = mapped_column(String(200))  # the holding process (host, pid, token)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The lease: renewed by the holder; once past, anyone may take the lock over. None: by hand.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditRow(Base):
    """One entry of the audit log; `hash` chains it to the entry before (conveyor.core.audit)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_app_at", "app", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    app: Mapped[str] = mapped_column(String(200))
    environment: Mapped[str | None] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class StoreMetaRow(Base):
    """Facts about the database itself: which conveyor version last upgraded its schema."""

    __tablename__ = "conveyor_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SchemaChangeRow(Base):
    """A migration one deployment (or `conveyor migrate`) applied or undid in an environment's
    app database (conveyor.store.schema_changes)."""

    __tablename__ = "schema_changes"
    __table_args__ = (Index("ix_schema_changes_app_env", "app", "environment", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    environment: Mapped[str] = mapped_column(String(200))
    deployment_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("deployments.id", ondelete="SET NULL")
    )
    version: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # expand | contract
    direction: Mapped[str] = mapped_column(String(8))  # up | down
    seconds: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReleaseImageRow(Base):
    """The image each container service of a release runs (store/images.py)."""

    __tablename__ = "release_images"

    app: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    service: Mapped[str] = mapped_column(String(200), primary_key=True)
    image: Mapped[str] = mapped_column(String(300))
    image_id: Mapped[str] = mapped_column(String(100))
    built: Mapped[bool] = mapped_column(Boolean)


# --- secrets (conveyor.store.secrets) ------------------------------------------------------------


class SecretKeyringRow(Base):
    """Which master key an app's secrets are written under: its check value, never the key.

    kind "key": a raw key (CONVEYOR_MASTER_KEY or the key file); "passphrase": derived with
    Argon2id from a passphrase and `salt`.
    """

    __tablename__ = "secret_keyring"

    app: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    salt: Mapped[str | None] = mapped_column(String(64))
    check: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SecretVersionRow(Base):
    """One version of one secret, encrypted (conveyor.secrets.crypto); removed: a tombstone."""

    __tablename__ = "secret_versions"
    __table_args__ = (
        UniqueConstraint("app", "environment", "name", "version", name="uq_secret_versions_slot"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(200))
    environment: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    nonce: Mapped[bytes | None] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    removed: Mapped[bool] = mapped_column(Boolean)
    action: Mapped[str] = mapped_column(String(16))  # set, rotate, import, rm
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SecretCacheRow(Base):
    """The last value a remote provider gave for a name, encrypted: for a break-glass read."""

    __tablename__ = "secret_cache"

    app: Mapped[str] = mapped_column(String(200), primary_key=True)
    environment: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[str] = mapped_column(String(200))
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime())


# --- Access (issue 14; conveyor.store.access) ----------------------------------------------------


class ApiTokenRow(Base):
    """An API token: its public id and the SHA-256 digest of its secret, never the secret.

    It grants `role` (on `environment`, or on every one when None) only while its owner holds
    that role (conveyor.core.access)."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_owner", "owner"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    environment: Mapped[str | None] = mapped_column(String(200))
    digest: Mapped[str] = mapped_column(String(64))  # sha256 hex of the secret
    description: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # None: never
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_from: Mapped[str | None] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_by: Mapped[str | None] = mapped_column(String(200))
    # "api": made by `tokens create` / POST /tokens, narrowed to role and environment;
    # "session": a browser's login (OIDC), carrying every role its owner holds (role unused).
    kind: Mapped[str] = mapped_column(String(16), default="api", server_default="api")


class RoleBindingRow(Base):
    """One role held by one subject, on one environment or (environment None) on all."""

    __tablename__ = "role_bindings"
    # NULLs are distinct in a unique constraint: conveyor.store.access also checks before adding.
    __table_args__ = (
        UniqueConstraint("subject", "role", "environment", name="uq_role_bindings_grant"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    environment: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200))


class IdempotencyKeyRow(Base):
    """The answer the API gave to a request with an `Idempotency-Key`, to give it again."""

    __tablename__ = "idempotency_keys"

    actor: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    environment: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    deployment_id: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
