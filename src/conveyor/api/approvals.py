"""`GET|POST /api/v1/deployments/{ref}/approvals`: the approvals of a deployment's release for
its environment, given through conveyor.promotion.record_decision (what `conveyor approve|reject`
does). `ref` is a deployment's id or a deploy waiting for approval (`r<n>`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from conveyor.api.auth import ApiError, authorize, server, via
from conveyor.api.models import ApprovalBody, Approvals
from conveyor.api.write import Found, _config, find
from conveyor.config import Config
from conveyor.core.access import Principal
from conveyor.store import requests as waiting_requests

router = APIRouter()


def _requested_by(request: Request, found: Found) -> str | None:
    """Who asked for the deployment being approved: the waiting request's requester, or the
    actor of the audit entry of the deploy that started it."""
    if found.request is not None:
        return found.request.requested_by
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
    from conveyor.promotion import ApprovalRefused, record_decision

    cfg = _config(request)
    found = find(request, cfg, ref)
    principal, decision = authorize(request, body.decision, found.environment, ref)
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
