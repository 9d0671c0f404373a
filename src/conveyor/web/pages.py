"""The dashboard's pages: server-rendered HTML; the JSON API does every write.

Each page reads the same data as the JSON API (conveyor.api.views, through conveyor.web.reads),
and shows only the buttons the viewer's role allows (conveyor.core.access.permissions). The
buttons post to the API with the session's CSRF token; the API decides again and audits, so a
hidden button is a courtesy, never the control.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from conveyor.api.auth import same_site
from conveyor.config import ConfigError
from conveyor.core.access import ACTIONS, Principal, Role, decide, permissions
from conveyor.web import reads
from conveyor.web.paths import STATIC_DIR, TEMPLATES_DIR
from conveyor.web.render import page

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "router"]

API = "/api/v1"
router = APIRouter(include_in_schema=False)


def _base(request: Request, who: Principal | None, live: bool = True) -> dict[str, Any]:
    return {
        "who": who,
        "live": live and who is not None,
        "events_url": f"{API}/events",
        "api": API,
        "csrf": reads.csrf_token(request) if who is not None else "",
        "csrf_header": reads.CSRF_HEADER,
    }


def _signed_in(request: Request) -> Principal | Response:
    who = reads.principal(request)
    if who is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
    return who


def _refused(request: Request, who: Principal, action: str, env: str | None) -> Response | None:
    """The 403 page when `who` may not `action` on `env` (None: allowed)."""
    decision = decide(who, action, env)
    if decision.allowed:
        return None
    needed = sorted(ACTIONS[action] - {Role.admin}) or [Role.admin]
    ctx = {
        **_base(request, who, live=False),
        "reason": decision.reason,
        "role_needed": needed[0],
        "environment": env,
    }
    return page(request, "refused.html", ctx, status_code=403)


def _missing(request: Request, who: Principal, what: str) -> Response:
    ctx = {**_base(request, who, live=False), "reason": what}
    return page(request, "missing.html", ctx, status_code=404)


def _broken_config(request: Request, who: Principal, exc: Exception) -> Response:
    ctx = {**_base(request, who, live=False), "reason": f"cannot read conveyor.toml: {exc}"}
    return page(request, "missing.html", ctx, status_code=503)


@router.get("/login")
def login_page(request: Request, next: str = "/", error: str = "") -> Response:
    safe = same_site(next)  # a path on this server only: no open redirect
    ctx = {
        **_base(request, None, live=False),
        "next": safe,
        "error": error,
        "login_action": reads.LOGIN_ACTION,
    }
    return page(request, "login.html", ctx)


@router.get("/")
def overview(request: Request, attention: str = "") -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    try:
        board = reads.overview(request, who, attention_only=bool(attention))
    except (ConfigError, OSError) as exc:
        return _broken_config(request, who, exc)
    words = ", ".join(a.replace("_", " ") for a in reads.ATTENTION)
    ctx = {**_base(request, who), "board": board, "attention": bool(attention)}
    return page(request, "overview.html", {**ctx, "attention_words": words})


@router.get("/deployments/{ref}")
def deployment(request: Request, ref: str) -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    if ref.startswith("r"):
        return _request_page(request, who, ref)
    dep = reads.deployment(request, ref)
    if dep is None:
        return _missing(request, who, f"There is no deployment {ref}.")
    env = dep["environment"]
    if refused := _refused(request, who, "read", env):
        return refused
    can = permissions(who, env)
    shown = [a for a in dep["actions"] if can.get(a)]
    # Approving a release for its environment while its deployment runs (a canary paused for a
    # human's word); the API refuses the deployer's own approval.
    approvable = dep["outcome"] == "in_progress" and can["approve"]
    why_not = ""
    if dep["actions"] and not shown:
        why_not = decide(who, dep["actions"][0], env).reason
    ctx = {**_base(request, who), "dep": dep, "can": can, "shown": shown, "why_not": why_not}
    ctx["approvable"] = approvable
    return page(request, "deployment.html", ctx)


def _request_page(request: Request, who: Principal, ref: str) -> Response:
    item = reads.waiting(request, who, ref)
    if item is None:
        return _missing(request, who, f"There is no deploy request {ref}.")
    if refused := _refused(request, who, "read", item["environment"]):
        return refused
    return page(request, "request.html", {**_base(request, who), "item": item})


@router.get("/approvals")
def approvals(request: Request) -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    try:
        inbox = reads.inbox(request, who)
    except (ConfigError, OSError) as exc:
        return _broken_config(request, who, exc)
    return page(request, "approvals.html", {**_base(request, who), "inbox": inbox})


@router.get("/environments/{env}")
def environment(request: Request, env: str, cursor: str = "") -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    if refused := _refused(request, who, "read", env):
        return refused
    data = reads.environment(request, env, cursor or None)
    if data is None:
        return _missing(request, who, f"There is no environment {env!r}.")
    ctx = {**_base(request, who), "env": data, "can": permissions(who, env)}
    return page(request, "environment.html", ctx)


AUDIT_FILTERS = ("actor", "environment", "action", "since")


@router.get("/audit")
def audit(request: Request, cursor: str = "") -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    filters = {k: request.query_params.get(k, "").strip() for k in AUDIT_FILTERS}
    env = filters["environment"] or None
    if refused := _refused(request, who, "read", env):
        return refused
    error = ""
    try:
        found = reads.audit(request, filters, cursor or None)
    except ValueError:
        found = {"entries": [], "next_cursor": None}
        error = f"since: {filters['since']!r} is not an ISO time such as 2026-12-01T08:00:00Z"
    query = {k: v for k, v in filters.items() if v}
    ctx = {
        **_base(request, who, live=False),
        "filters": filters,
        "error": error,
        "entries": found["entries"],
        "can_export": decide(who, "audit.export", env).allowed,
        "export_query": urlencode(query),
        "next_query": urlencode({**query, "cursor": found["next_cursor"] or ""}),
        "next_cursor": found["next_cursor"],
    }
    return page(request, "audit.html", ctx)


@router.get("/tokens")
def tokens(request: Request) -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    rows = reads.tokens(request, who)
    try:
        envs = reads.readable(who, reads.config(request))
    except (ConfigError, OSError) as exc:
        return _broken_config(request, who, exc)
    roles = [r.value for r in Role]
    ctx = {**_base(request, who, live=False), "tokens": rows, "roles": roles, "environments": envs}
    return page(request, "tokens.html", ctx)
