"""`/api/v1/tokens`: make, list and revoke API tokens through conveyor.auth.service (what
`conveyor tokens` does), for oneself or, as an admin, for anyone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from conveyor.api.auth import ApiError, authorize, principal_from_request, refuse, server, via
from conveyor.api.models import TokenBody, TokenCreated, TokenList, TokenRevoked
from conveyor.core.access import Decision, Principal, Role, decide, effective_roles

router = APIRouter()


def _audit_context(request: Request, principal: Principal, decision: Decision | None) -> Any:
    from conveyor.auth.service import AuditContext

    facts = via(request, principal, decision)
    return AuditContext(
        app=server(request).app_name(),
        token_id=principal.token_id,
        role=facts["role"],
        source=facts["source"],
    )


@router.post("/tokens", status_code=201, response_model=TokenCreated, tags=["access"])
def create_token(request: Request, body: TokenBody) -> dict[str, Any]:
    """A new token (yours, or another user's for an admin). The secret is in this answer only.
    A token never exceeds its owner's roles, nor the role of the credentials that make it."""
    from conveyor.auth.service import AccessError, parse_expiry
    from conveyor.auth.service import create_token as make

    principal = principal_from_request(request)
    owner = body.owner or principal.subject
    role = Role(body.role)
    if owner != principal.subject:
        principal, decision = authorize(request, "tokens.manage", body.environment, owner)
    else:
        decision = decide(principal, "read", body.environment)
        if role not in effective_roles(principal, body.environment):
            where = f"on {body.environment}" if body.environment else "on every environment"
            refuse(
                request,
                403,
                "token.create",
                body.environment,
                owner,
                f"these credentials do not act as {role} {where}: a token cannot give more",
                principal,
            )
    try:
        expires = parse_expiry(body.expires_in or "never")
    except ValueError as exc:
        raise ApiError(422, f"expires_in: {exc}") from None
    srv = server(request)
    try:
        rec, whole = make(
            srv.store,
            owner,
            role,
            body.environment,
            expires,
            body.description,
            principal.subject,
            datetime.now(UTC),
            srv.admins(),
            local=False,
            ctx=_audit_context(request, principal, decision),
        )
    except AccessError as exc:
        raise ApiError(422, str(exc)) from None
    return {"token": whole, "record": rec.to_json()}


@router.get("/tokens", response_model=TokenList, tags=["access"])
def list_tokens(request: Request, all: bool = False) -> dict[str, Any]:
    """Your tokens; `all=true`: everyone's (admin)."""
    from conveyor.store import access as stored

    principal = principal_from_request(request)
    owner: str | None = principal.subject
    if all:
        authorize(request, "tokens.manage", None, "tokens")
        owner = None
    return {"tokens": [t.to_json() for t in stored.list_tokens(server(request).store, owner)]}


@router.delete("/tokens/{token_id}", response_model=TokenRevoked, tags=["access"])
def revoke_token(request: Request, token_id: str) -> dict[str, Any]:
    """Revoke a token: yours, or anyone's for an admin."""
    from conveyor.auth.service import UnknownToken
    from conveyor.auth.service import revoke_token as revoke
    from conveyor.store import access as stored

    principal = principal_from_request(request)
    srv = server(request)
    rec = stored.get_token(srv.store, token_id)
    decision: Decision | None = None
    if rec is None or rec.owner != principal.subject:
        principal, decision = authorize(request, "tokens.manage", None, token_id)
    try:
        after = revoke(
            srv.store,
            token_id,
            principal.subject,
            datetime.now(UTC),
            ctx=_audit_context(request, principal, decision),
        )
    except UnknownToken as exc:
        raise ApiError(404, str(exc)) from None
    return {"token": after.to_json()}
