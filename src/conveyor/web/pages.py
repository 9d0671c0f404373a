"""The dashboard's pages: server-rendered HTML; the JSON API does every write.

Each page reads the same data as the JSON API, and shows only the buttons the viewer's role
allows (conveyor.core.access.permissions). The buttons post to the API with the session's CSRF
token; the API decides again and audits, so a hidden button is a courtesy, never the control.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from conveyor.core.access import ACTIONS, Principal, Role, decide, permissions
from conveyor.web import reads
from conveyor.web.paths import STATIC_DIR, TEMPLATES_DIR
from conveyor.web.render import page

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "router"]

API = "/api/v1"
router = APIRouter(include_in_schema=False)


def _base(request: Request, who: Principal, live: bool = True) -> dict[str, Any]:
    csrf = reads.csrf_token(request)
    return {
        "who": who,
        "live": live,
        "events_url": f"{API}/events",
        "api": API,
        "csrf": csrf,
        "csrf_header": reads.CSRF_HEADER,
    }


def _signed_in(request: Request) -> Principal | Response:
    who = reads.principal(request)
    if who is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
    return who


def _refused(request: Request, who: Principal, action: str, env: str | None) -> Response | None:
    decision = decide(who, action, env)
    if decision.allowed:
        return None
    needed = sorted(ACTIONS[action] - {Role.admin}) or [Role.admin]
    return page(
        request,
        "refused.html",
        {**_base(request, who, live=False), "reason": decision.reason, "role_needed": needed[0]},
        status_code=403,
    )


def _missing(request: Request, who: Principal, what: str) -> Response:
    ctx = {**_base(request, who, live=False), "reason": what}
    return page(request, "missing.html", ctx, status_code=404)


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    # Only a path on this server: a `next` pointing elsewhere would make the login an open
    # redirect.
    safe = next if next.startswith("/") and not next.startswith("//") else "/"
    ctx = {"who": None, "live": False, "next": safe, "login_action": reads.LOGIN_ACTION}
    return page(request, "login.html", ctx)


@router.get("/")
def overview(request: Request, attention: str = "") -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    if refused := _refused(request, who, "read", None):
        return refused
    board = reads.overview(reads.source(request), attention_only=bool(attention))
    words = ", ".join(a.replace("_", " ") for a in reads.ATTENTION)
    ctx = {**_base(request, who), "board": board, "attention": bool(attention)}
    return page(request, "overview.html", {**ctx, "attention_words": words})


@router.get("/deployments/{dep_id}")
def deployment(request: Request, dep_id: int) -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    dep = reads.deployment(reads.source(request), dep_id)
    if dep is None:
        return _missing(request, who, f"There is no deployment #{dep_id}.")
    if refused := _refused(request, who, "read", dep["environment"]):
        return refused
    can = permissions(who, dep["environment"])
    shown = [a for a in dep["actions"] if can.get(a)]
    why_not = "" if shown or not dep["actions"] else _why_not(who, dep["actions"][0], dep)
    ctx = {**_base(request, who), "dep": dep, "can": can, "any_action": bool(shown)}
    return page(request, "deployment.html", {**ctx, "why_not": why_not})


def _why_not(who: Principal, action: str, dep: dict[str, Any]) -> str:
    return decide(who, action, dep["environment"]).reason


@router.get("/approvals")
def approvals(request: Request) -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    inbox = reads.approvals(reads.source(request), who)
    return page(request, "approvals.html", {**_base(request, who), "inbox": inbox})


@router.get("/environments/{env}")
def environment(request: Request, env: str) -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    data = reads.environment(reads.source(request), env)
    if data is None:
        return _missing(request, who, f"There is no environment {env!r}.")
    if refused := _refused(request, who, "read", env):
        return refused
    ctx = {**_base(request, who), "env": data, "can": permissions(who, env)}
    return page(request, "environment.html", ctx)


AUDIT_FILTERS = ("actor", "environment", "action", "since")


@router.get("/audit")
def audit(request: Request) -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    filters = {k: request.query_params.get(k, "") for k in AUDIT_FILTERS}
    env = filters["environment"] or None
    if refused := _refused(request, who, "read", env):
        return refused
    try:
        entries = reads.audit(reads.source(request), filters)
    except ValueError as exc:  # a `since` that is no ISO time
        entries = []
        filters["error"] = str(exc)
    query = urlencode({k: v for k, v in filters.items() if v and k in AUDIT_FILTERS})
    ctx = {
        **_base(request, who, live=False),
        "filters": filters,
        "entries": entries,
        "can_export": decide(who, "audit.export", env).allowed,
        "export_query": query,
        "next_cursor": None,
    }
    return page(request, "audit.html", ctx)


@router.get("/tokens")
def tokens(request: Request) -> Response:
    who = _signed_in(request)
    if isinstance(who, Response):
        return who
    rows = reads.tokens(reads.source(request), who)
    ctx = {**_base(request, who, live=False), "tokens": rows, "roles": [r.value for r in Role]}
    return page(request, "tokens.html", ctx)
