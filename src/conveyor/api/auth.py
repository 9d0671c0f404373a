"""Who a request acts for, and whether they may: bearer tokens, the browser session, CSRF.

A request authenticates with `Authorization: Bearer cvy_<id>_<secret>` or with the session
cookie the login page sets (`conveyor_session`: HttpOnly, SameSite=Strict, Secure under TLS; it
holds the token itself, so the token's expiry, revocation and its owner's current bindings apply
to the browser exactly as to a script). A write authenticated by the cookie also needs the header
`X-CSRF-Token`: an HMAC of the cookie with the server's key (`GET /api/v1/me` gives it to pages).

Every refusal (401, 403) is appended to the audit log with who, which token, where from and why.
The decision itself is conveyor.core.access; tokens and bindings are conveyor.auth.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from conveyor.api.state import Server
from conveyor.auth.service import Unauthenticated, authenticate
from conveyor.core.access import Decision, Principal, decide
from conveyor.store import audit

SESSION_COOKIE = "conveyor_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TOKEN_ID = re.compile(r"^cvy_([A-Za-z0-9]+)_")

router = APIRouter(include_in_schema=False)


class ApiError(Exception):
    """An answer other than success: the status, the reason in one sentence, extra fields."""

    def __init__(
        self,
        status: int,
        reason: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
        self.extra = extra


def server(request: Request) -> Server:
    srv: Server = request.app.state.conveyor
    return srv


def source(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _credentials(request: Request) -> tuple[str | None, str]:
    """(the token, how it came: "token" from the header, "session" from the cookie)."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), "token"
        return None, "token"
    cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie, "session") if cookie else (None, "session")


def token_id(token: str | None) -> str | None:
    """The public id inside a token (never its secret), for the audit log of a refusal."""
    match = _TOKEN_ID.match(token or "")
    return match.group(1) if match else None


def principal_from_request(request: Request) -> Principal:
    """The principal of this request (found once per request); ApiError 401 when the
    credentials are missing, wrong, expired or revoked (audited)."""
    found = getattr(request.state, "principal", None)
    if isinstance(found, Principal):
        return found
    token, via = _credentials(request)
    srv = server(request)
    now = datetime.now(UTC)
    if token is None:
        reason = "no credentials: send Authorization: Bearer cvy_... or log in"
        refuse(request, 401, "authenticate", None, request.url.path, reason, None)
    try:
        principal = authenticate(srv.store, srv.admins(), token, now, source(request))
    except Unauthenticated as exc:
        refuse(request, 401, "authenticate", None, request.url.path, str(exc), None, token)
    if via == "session":
        from dataclasses import replace

        principal = replace(principal, via="session")
    request.state.principal = principal
    if via == "session" and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent, csrf_token(request)):
            reason = f"a write from the browser session needs the {CSRF_HEADER} header"
            refuse(request, 403, "csrf", None, request.url.path, reason, principal)
    return principal


def recheck(request: Request) -> Callable[[], Principal | None]:
    """Authenticate this request's credentials again, later (a long-lived event stream): the
    principal as the token and its owner's bindings stand then, or None when it no longer
    authenticates (expired, revoked)."""
    token, _ = _credentials(request)
    srv, address = server(request), source(request)

    def again() -> Principal | None:
        try:
            return authenticate(srv.store, srv.admins(), token, datetime.now(UTC), address)
        except Unauthenticated:
            return None

    return again


def csrf_token(request: Request) -> str:
    """The CSRF token of this request's session ("" without a session cookie)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return ""
    return hmac.new(server(request).key, cookie.encode(), hashlib.sha256).hexdigest()


def authorize(
    request: Request, action: str, environment: str | None, target: str = ""
) -> tuple[Principal, Decision]:
    """The principal, when their role allows `action` on `environment`; else 403 (audited)."""
    principal = principal_from_request(request)
    decision = decide(principal, action, environment)
    if not decision.allowed:
        refuse(request, 403, action, environment, target, decision.reason, principal)
    return principal, decision


def via(request: Request, principal: Principal, decision: Decision | None) -> dict[str, Any]:
    """The API's facts for an audit entry: the token, the role used, the source address."""
    return {
        "api": True,
        "auth": principal.via,
        "token": principal.token_id,
        "role": str(decision.role) if decision is not None and decision.role else None,
        "source": source(request),
    }


def refuse(
    request: Request,
    status: int,
    action: str,
    environment: str | None,
    target: str,
    reason: str,
    principal: Principal | None,
    token: str | None = None,
) -> Any:
    """Audit a refused request, then answer it with `status` (raises ApiError)."""
    srv = server(request)
    data = {
        "via": {
            "api": True,
            "token": principal.token_id if principal is not None else token_id(token),
            "role": None,
            "source": source(request),
            "method": request.method,
            "path": request.url.path,
            "status": status,
        }
    }
    audit.record(
        srv.store,
        at=datetime.now(UTC),
        actor=principal.subject if principal is not None else "anonymous",
        action=action,
        app=srv.app_name(),
        environment=environment,
        target=target or request.url.path,
        outcome="refused",
        detail=reason,
        data=data,
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    raise ApiError(status, reason, headers)


# --- the browser session: POST /login, POST /logout (at the root, for the dashboard's form) --


@router.post("/login")
async def login(request: Request) -> Response:
    """The login form posts a token (field `token`); a valid one becomes the session cookie."""
    from starlette.concurrency import run_in_threadpool

    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    return await run_in_threadpool(_login, request, token, same_site((form.get("next") or [""])[0]))


def same_site(target: str) -> str:
    """`target` when it is a path on this server, else "/": a `next` pointing elsewhere
    (`//evil.example`, `https://...`, `/\\evil`) would make the login an open redirect."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(ch) < 32 for ch in target):
        return "/"
    return target


def _login(request: Request, token: str, target: str = "/") -> Response:
    srv = server(request)
    try:
        principal = authenticate(
            srv.store, srv.admins(), token or None, datetime.now(UTC), source(request)
        )
    except Unauthenticated as exc:
        with contextlib.suppress(ApiError):  # audited; the browser goes back to the form
            refuse(request, 401, "login", None, "/login", str(exc), None, token)
        return RedirectResponse(
            f"/login?error={quote(str(exc))}&next={quote(target)}", status_code=303
        )
    _audit_ok(request, principal, "login")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=srv.settings.tls,
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Clear the session cookie; a session made by a login (OIDC) is revoked too, an API token
    posted to the login form stays valid for its other uses."""
    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(_logout, request)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _logout(request: Request) -> None:
    from conveyor.auth.service import AuditContext, revoke_token
    from conveyor.store import access as stored

    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return
    srv = server(request)
    now = datetime.now(UTC)
    try:
        principal = authenticate(srv.store, srv.admins(), cookie, now, source(request))
    except Unauthenticated:
        return  # expired or revoked already: nothing to end
    rec = stored.get_token(srv.store, principal.token_id) if principal.token_id else None
    if rec is not None and rec.kind == stored.SESSION:
        ctx = AuditContext(srv.app_name(), principal.token_id, None, source(request))
        revoke_token(srv.store, rec.id, principal.subject, now, ctx=ctx)
    _audit_ok(request, principal, "logout")


def _audit_ok(request: Request, principal: Principal, action: str) -> None:
    srv = server(request)
    audit.record(
        srv.store,
        at=datetime.now(UTC),
        actor=principal.subject,
        action=action,
        app=srv.app_name(),
        environment=None,
        target=principal.token_id or "",
        outcome="ok",
        detail=f"browser session {'started' if action == 'login' else 'ended'}",
        data={"via": via(request, principal, None)},
    )
