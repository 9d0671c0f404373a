"""The approvals of a release for an environment, given, listed and withdrawn through
conveyor.promotion (what `conveyor approve|reject [--withdraw]` does), under two addresses:

- `/deployments/{ref}/approvals`: the release and environment of a deployment (`17`) or of a
  deploy waiting for approval (`r3`); whoever asked for it cannot approve it.
- `/environments/{env}/releases/{version}/approvals`: before anyone asked to deploy it (as
  `conveyor approve VERSION --env ENV` can); whoever asked for a deploy of it still waiting
  cannot approve it.

Both answer through the same functions below; `DELETE .../approvals/{decision}` withdraws the
caller's own approval or rejection (an admin's: everyone's).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request

from conveyor.api.auth import (
    ApiError,
    authorize,
    principal_from_request,
    refuse,
    server,
    via,
)
from conveyor.api.models import ApprovalBody, Approvals, Withdrawn
from conveyor.api.write import Found, _config, _known, find
from conveyor.config import Config
from conveyor.core.access import Principal, Role, decide, effective_roles
from conveyor.store import requests as waiting_requests

router = APIRouter()

# What `DELETE .../approvals/{decision}` withdraws: an approval, or a rejection.
Verdict = Literal["approve", "reject"]


def _requested_by(request: Request, found: Found) -> str | None:
    """Who asked for the deployment being approved: the waiting request's requester, or the
    actor of the audit entry of the deploy that started it. For a release (no deployment):
    whoever asked for a deploy of it to that environment still waiting, if anyone."""
    if found.request is not None:
        return found.request.requested_by
    if found.deployment_id is None:
        app = server(request).app_name()
        asked = [
            r
            for r in waiting_requests.waiting(server(request).store, app, found.environment)
            if r.version == found.version
        ]
        return asked[-1].requested_by if asked else None
    from sqlalchemy import select

    from conveyor.store.models import AuditRow

    store = server(request).store
    with store.reading() as session:
        rows = session.scalars(
            select(AuditRow)
            .where(
                AuditRow.action == "deploy",
                AuditRow.environment == found.environment,
                AuditRow.target == found.version,
            )
            .order_by(AuditRow.id.desc())
            .limit(50)
        )
        for row in rows:
            if (row.data or {}).get("deployment") == found.deployment_id:
                return row.actor
    return None


def _approvals(request: Request, cfg: Config, found: Found, principal: Principal) -> dict[str, Any]:
    from conveyor.api.views import approval_json
    from conveyor.promotion import evaluate
    from conveyor.store.facts import FactStore

    store = server(request).store
    items = [
        approval_json(a)
        for a in FactStore(store).approvals(cfg.app.name, found.environment)
        if a.version == found.version
    ]
    rec = store.get_release(cfg.app.name, found.version)
    gates: list[dict[str, Any]] = []
    if rec is not None:
        requester = _requested_by(request, found) or principal.subject
        decision = evaluate(cfg, store, rec, found.environment, requester, datetime.now(UTC))
        gates = [g for g in decision.to_json()["gates"] if g["gate"] in ("approvals", "rejected")]
    return {
        "version": found.version,
        "environment": found.environment,
        "approvals": items,
        "gates": gates,
    }


def _release(request: Request, cfg: Config, env: str, version: str) -> Found:
    """What `/environments/{env}/releases/{version}` names; 404 for an unknown environment or
    release (valid credentials first: an unauthenticated caller learns nothing)."""
    principal_from_request(request)
    _known(cfg, env)
    if server(request).store.get_release(cfg.app.name, version) is None:
        raise ApiError(404, f"unknown release {version!r} (see GET /api/v1/releases)")
    return Found(env, version, None, False, None)


def _decide(
    request: Request, cfg: Config, found: Found, target: str, body: ApprovalBody
) -> dict[str, Any]:
    """Approve or reject `found`'s release for its environment (conveyor.promotion's
    record_decision, with the API's facts); a rejection ends the deploys waiting for it."""
    from conveyor.promotion import ApprovalRefused, record_decision

    principal, decision = authorize(request, body.decision, found.environment, target)
    if body.decision == "reject" and not body.comment.strip():
        raise ApiError(
            422, "say why: a rejection needs a comment (it blocks others until withdrawn)"
        )
    srv = server(request)
    now = datetime.now(UTC)
    try:
        record_decision(
            cfg,
            srv.store,
            found.version,
            found.environment,
            principal.subject,
            body.decision,
            body.comment,
            now,
            requested_by=_requested_by(request, found),
            via=via(request, principal, decision),
        )
    except ApprovalRefused as exc:
        raise ApiError(403, str(exc)) from None
    if body.decision == "reject":
        waiting_requests.end(
            srv.store,
            cfg.app.name,
            found.environment,
            found.version,
            waiting_requests.REJECTED,
            now,
        )
    return _approvals(request, cfg, found, principal)


def _withdraw(
    request: Request, cfg: Config, found: Found, target: str, decision: Verdict
) -> dict[str, Any]:
    """Withdraw the caller's standing approval or rejection of `found`'s release for its
    environment (an admin on it: everyone's), through conveyor.promotion's withdraw_decision;
    409 when none stood (audited as refused, as locally)."""
    from conveyor.promotion import withdraw_decision

    principal = principal_from_request(request)
    allowed = decide(principal, decision, found.environment)  # approving's role, to withdraw
    if not allowed.allowed:
        refuse(
            request,
            403,
            f"{decision}.withdraw",
            found.environment,
            target,
            allowed.reason,
            principal,
        )
    anyone = Role.admin in effective_roles(principal, found.environment)
    ended = withdraw_decision(
        cfg,
        server(request).store,
        found.version,
        found.environment,
        principal.subject,
        decision,
        datetime.now(UTC),
        anyone=anyone,
        via=via(request, principal, allowed),
    )
    if not ended:
        what = "approval" if decision == "approve" else "rejection"
        whose = "" if anyone else f" by {principal.subject}"
        raise ApiError(
            409,
            f"no standing {what}{whose} of {found.version} for {found.environment} to withdraw",
        )
    from conveyor.api.views import approval_json

    return {
        **_approvals(request, cfg, found, principal),
        "withdrawn": [approval_json(a) for a in ended],
    }


# --- /deployments/{ref}/approvals ---------------------------------------------------------------


@router.get("/deployments/{ref}/approvals", response_model=Approvals, tags=["approvals"])
def approvals(request: Request, ref: str) -> dict[str, Any]:
    """The approvals and rejections of the deployment's release for its environment."""
    cfg = _config(request)
    found = find(request, cfg, ref)
    principal, _ = authorize(request, "read", found.environment, ref)
    return _approvals(request, cfg, found, principal)


@router.post(
    "/deployments/{ref}/approvals", response_model=Approvals, status_code=201, tags=["approvals"]
)
def decide_approval(request: Request, ref: str, body: ApprovalBody) -> dict[str, Any]:
    """Approve or reject the deployment's release for its environment, with a comment (required
    to reject). Whoever asked for the deployment cannot approve it (403)."""
    cfg = _config(request)
    return _decide(request, cfg, find(request, cfg, ref), ref, body)


@router.delete(
    "/deployments/{ref}/approvals/{decision}", response_model=Withdrawn, tags=["approvals"]
)
def withdraw_approval(request: Request, ref: str, decision: Verdict) -> dict[str, Any]:
    """Withdraw your approval (`approve`) or rejection (`reject`) of the deployment's release
    for its environment; an admin withdraws everyone's. 409 when none stands."""
    cfg = _config(request)
    return _withdraw(request, cfg, find(request, cfg, ref), ref, decision)


# --- /environments/{env}/releases/{version}/approvals -------------------------------------------


@router.get(
    "/environments/{env}/releases/{version}/approvals",
    response_model=Approvals,
    tags=["approvals"],
)
def release_approvals(request: Request, env: str, version: str) -> dict[str, Any]:
    """The approvals and rejections of a release for an environment; `gates`: the approvals
    and rejected gates as they stand for a deploy by the caller."""
    cfg = _config(request)
    found = _release(request, cfg, env, version)
    principal, _ = authorize(request, "read", env, version)
    return _approvals(request, cfg, found, principal)


@router.post(
    "/environments/{env}/releases/{version}/approvals",
    response_model=Approvals,
    status_code=201,
    tags=["approvals"],
)
def decide_release(request: Request, env: str, version: str, body: ApprovalBody) -> dict[str, Any]:
    """Approve or reject a release for an environment before (or without) a deploy asking for
    it, as `conveyor approve|reject VERSION --env ENV`. A comment is required to reject."""
    cfg = _config(request)
    return _decide(request, cfg, _release(request, cfg, env, version), version, body)


@router.delete(
    "/environments/{env}/releases/{version}/approvals/{decision}",
    response_model=Withdrawn,
    tags=["approvals"],
)
def withdraw_release(request: Request, env: str, version: str, decision: Verdict) -> dict[str, Any]:
    """Withdraw your approval (`approve`) or rejection (`reject`) of a release for an
    environment, as `conveyor approve|reject --withdraw`; an admin withdraws everyone's."""
    cfg = _config(request)
    return _withdraw(request, cfg, _release(request, cfg, env, version), version, decision)
