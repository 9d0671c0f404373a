"""Request and response bodies of the JSON API: what /api/v1/openapi.json documents.

Response models name the fields a client relies on and allow more (the read models in
conveyor.api.views grow without breaking clients).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(Open):
    error: str


class Me(Open):
    subject: str
    via: str
    token_id: str | None
    scope: dict[str, Any] | None
    bindings: list[dict[str, Any]]
    csrf: str


class Permissions(Open):
    environment: str | None
    permissions: dict[str, bool]


class Attention(Open):
    waiting_for_approval: bool
    paused: bool
    degraded: bool
    rolled_back: bool


class DashboardRow(Open):
    environment: str
    service: str
    release: str | None
    state: str
    since: str | None
    deployment_id: int | None
    attention: Attention
    needs_attention: bool


class Dashboard(Open):
    app: str
    environments: list[dict[str, Any]]
    services: list[DashboardRow]
    waiting: list[dict[str, Any]]


class EnvironmentSummary(Open):
    name: str
    live: list[str]
    lock: dict[str, Any] | None
    latest_deployment: dict[str, Any] | None
    gates: dict[str, Any]


class EnvironmentDetail(Open):
    name: str
    gates: dict[str, Any]
    strategy: str
    lock: dict[str, Any] | None
    services: list[dict[str, Any]]
    history: list[dict[str, Any]]
    waiting: list[dict[str, Any]]
    live: dict[str, Any] | None = None


class EnvironmentPatch(BaseModel):
    """What may change at runtime: the lock. Everything else is conveyor.toml's."""

    model_config = ConfigDict(extra="forbid")
    locked: bool
    reason: str = ""
    force: bool = Field(False, description="unlocking: also break a running operation's lock")


class Release(Open):
    version: str
    commit: str | None
    digest: str
    size: int
    created_at: str
    live_in: list[str]


class ReleaseDetail(Release):
    tags: list[str]
    checks: list[dict[str, Any]]
    approvals: list[dict[str, Any]]


class Inbox(Open):
    waiting: list[dict[str, Any]] = Field(
        description="deploys waiting for approval: id (r<n>), environment, version, "
        "requested_by, state, gates"
    )


class LockChange(Open):
    environment: str
    lock: dict[str, Any] | None
    released: dict[str, Any] | None = None


class Deployment(Open):
    id: int
    environment: str
    version: str
    kind: str
    outcome: str
    started_at: str
    finished_at: str | None
    reason: str
    previous_version: str | None


class DeploymentPage(Open):
    deployments: list[Deployment]
    next_cursor: str | None


class DeploymentDetail(Deployment):
    steps: list[dict[str, Any]]
    traffic: dict[str, Any]
    analysis: dict[str, Any]
    approvals: list[dict[str, Any]]
    events: list[dict[str, Any]]


class DeployBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=64)
    force: bool = False
    reason: str = Field("", max_length=2000)
    override_freeze: bool = Field(
        False,
        description="deploy through a freeze window (`deploy --override-freeze`): needs the "
        "admin role on the environment, the caller among conveyor.toml's [access] admins, and a "
        "`reason` (recorded)",
    )


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_secrets: bool = Field(
        False,
        description="keep the current secret versions (`rollback --keep-secrets`) instead of "
        "giving the previous version back the ones it ran with",
    )
    migrations: Literal["keep", "down"] = Field(
        "keep",
        description="down: once traffic is back, undo the migrations the rolled-back "
        "deployment applied (`rollback --migrations down`)",
    )
    force: bool = Field(
        False, description="with migrations down: also run Down sections that drop data"
    )


class RetryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = Field(False, description="deploy it again even when it is live")


class AbortBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("by request", max_length=2000)


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    full: bool = False


class Accepted(Open):
    status: Literal["started", "waiting_for_approval", "done"]
    deployment_id: int | None
    environment: str
    version: str | None = None


class ActionResult(Open):
    ok: bool
    data: dict[str, Any]


class ApprovalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject"]
    comment: str = Field("", max_length=2000)


class Approvals(Open):
    version: str
    environment: str
    approvals: list[dict[str, Any]]
    gates: list[dict[str, Any]]


class Withdrawn(Approvals):
    withdrawn: list[dict[str, Any]] = Field(description="the approvals or rejections withdrawn")


class AuditPage(Open):
    entries: list[dict[str, Any]]
    next_cursor: str | None


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["viewer", "deployer", "approver", "admin"]
    environment: str | None = None
    expires_in: str | None = Field("90d", description='"90d", "12h", "2w", "1d12h" or "never"')
    description: str = Field("", max_length=500)
    owner: str | None = Field(None, description="another user's (admin only); default: yours")


class TokenCreated(Open):
    token: str = Field(description="the whole token: shown this once, never again")
    record: dict[str, Any]


class TokenList(Open):
    tokens: list[dict[str, Any]]


class TokenRevoked(Open):
    token: dict[str, Any]
