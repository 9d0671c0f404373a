"""`/auth/oidc/login` and `/auth/oidc/callback`: browser login through an OpenID Connect
provider (authorization code + PKCE), ending in the API's own session cookie.

The login keeps its state, nonce and PKCE verifier in the server (conveyor.auth.oidc.
PendingLogins) and gives the browser only the state, in a short-lived HttpOnly cookie that the
callback must bring back (a login started elsewhere cannot be finished here). The callback trades
the code for the ID token, checks it, sets the user's bindings to what their groups give now
(`[access.oidc] groups`; bindings made by hand stay), and starts a session: a token of kind
"session" in the API's session cookie (conveyor.api.auth), so that expiry, revocation and the
owner's current bindings apply to it as to every token. Every refusal is in the audit log.

Mounted by the API's application: `app.include_router(oidc_routes.router)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from conveyor.api.auth import SESSION_COOKIE, ApiError, refuse, server, source
from conveyor.api.state import Server
from conveyor.auth import oidc
from conveyor.auth.service import AccessError, AuditContext, start_session
from conveyor.config import Config, ConfigError
from conveyor.config.models import OidcConfig
from conveyor.core.access import Principal
from conveyor.store import access as stored

STATE_COOKIE = "conveyor_oidc_state"
CALLBACK_PATH = "/auth/oidc/callback"
# The provider's discovery document and keys are read again after this long (key rotation).
PROVIDER_TTL = timedelta(minutes=10)
SOURCE = "oidc"  # created_by prefix of the bindings that groups give

router = APIRouter(include_in_schema=False)


@dataclass
class _Runtime:
    """One per application: logins under way and the provider's cached documents."""

    pending: oidc.PendingLogins = field(default_factory=oidc.PendingLogins)
    provider: tuple[datetime, oidc.Provider, dict[str, Any]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_RUNTIME_LOCK = threading.Lock()


def _runtime(request: Request) -> _Runtime:
    with _RUNTIME_LOCK:
        found = getattr(request.app.state, "oidc", None)
        if not isinstance(found, _Runtime):
            found = _Runtime()
            request.app.state.oidc = found
        return found


def _configured(srv: Server) -> tuple[Config, OidcConfig]:
    try:
        cfg = srv.config()
    except (ConfigError, OSError) as exc:
        raise ApiError(503, f"the configuration cannot be read: {exc}") from None
    if cfg.access.oidc is None:
        raise ApiError(404, "OIDC login is not configured: see [access.oidc] in docs/access.md")
    return cfg, cfg.access.oidc


def _safe_next(target: str) -> str:
    """Only a path on this server: a `next` pointing elsewhere would make the login an open
    redirect."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def _provider(rt: _Runtime, issuer: str, now: datetime) -> tuple[oidc.Provider, Any]:
    with rt.lock:
        cached = rt.provider
    if cached is not None and cached[1].issuer == issuer and now - cached[0] < PROVIDER_TTL:
        return cached[1], cached[2]
    provider = await asyncio.to_thread(oidc.discover, issuer)
    jwks = await asyncio.to_thread(oidc.fetch_jwks, provider)
    with rt.lock:
        rt.provider = (now, provider, jwks)
    return provider, jwks


@router.get("/auth/oidc/login")
async def oidc_login(request: Request, next: str = "/") -> Response:
    """Start a login: to the provider's authorization endpoint, with PKCE (S256)."""
    srv = server(request)
    _, conf = _configured(srv)
    now = datetime.now(UTC)
    rt = _runtime(request)
    try:
        provider, _ = await _provider(rt, conf.issuer, now)
    except oidc.OidcError as exc:
        return _refused(request, srv, f"the OIDC provider cannot be used: {exc}")
    pending = oidc.begin(_safe_next(next), now)
    with rt.lock:
        rt.pending.put(pending)
    settings = _settings(conf, None)
    response = RedirectResponse(
        oidc.authorization_url(provider, settings, _redirect_uri(request), pending),
        status_code=303,
    )
    # Lax: the provider sends the browser back with a top-level GET from its own site.
    response.set_cookie(
        STATE_COOKIE,
        pending.state,
        max_age=int(oidc.PENDING_LIFETIME.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=srv.settings.tls,
        path=CALLBACK_PATH,
    )
    return response


@router.get(CALLBACK_PATH, name="oidc_callback")
async def oidc_callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
) -> Response:
    """The provider's answer: check it, set the user's group bindings, start the session."""
    srv = server(request)
    cfg, conf = _configured(srv)
    now = datetime.now(UTC)
    rt = _runtime(request)
    if error:
        return _refused(request, srv, f"the OIDC provider refused the login: {error[:100]}")
    sent = request.cookies.get(STATE_COOKIE, "")
    if not state or not code or not sent or not hmac.compare_digest(state, sent):
        return _refused(request, srv, "this login was not started in this browser (state)")
    with rt.lock:
        pending = rt.pending.take(state, now)
    if pending is None:
        return _refused(request, srv, "this login has expired or was used already: start again")
    try:
        secret = await _client_secret(srv, cfg, conf)
        settings = _settings(conf, secret)
        provider, jwks = await _provider(rt, conf.issuer, now)
        id_token = await asyncio.to_thread(
            oidc.exchange_code, provider, settings, code, pending.verifier, _redirect_uri(request)
        )
        try:
            claims = oidc.verify_id_token(id_token, jwks, settings, pending.nonce, now)
        except oidc.OidcError:  # the provider may have rotated its keys: read them once more
            with rt.lock:
                rt.provider = None
            provider, jwks = await _provider(rt, conf.issuer, now)
            claims = oidc.verify_id_token(id_token, jwks, settings, pending.nonce, now)
        who = oidc.identity(claims, settings)
    except oidc.OidcError as exc:
        return _refused(request, srv, f"OIDC login failed: {exc}")
    app = cfg.app.name
    ctx = AuditContext(app=app, source=source(request))
    stored.replace_bindings(
        srv.store,
        who.subject,
        SOURCE,
        who.bindings,
        at=now,
        entry=lambda action, b: _binding_entry(app, ctx, now, action, b),
    )
    try:
        rec, whole = start_session(srv.store, who.subject, srv.admins(), now, how="oidc", ctx=ctx)
    except AccessError as exc:
        groups = ", ".join(who.groups) or "none"
        return _refused(request, srv, f"{exc} (groups: {groups})", who.subject)
    response = HTMLResponse(_continue_page(pending.next_path))
    response.set_cookie(
        SESSION_COOKIE,
        whole,
        max_age=int((rec.expires_at - now).total_seconds()) if rec.expires_at else None,
        httponly=True,
        samesite="strict",
        secure=srv.settings.tls,
        path="/",
    )
    response.delete_cookie(STATE_COOKIE, path=CALLBACK_PATH)
    return response


def _redirect_uri(request: Request) -> str:
    return str(request.url_for("oidc_callback"))


def _settings(conf: OidcConfig, secret: str | None) -> oidc.OidcSettings:
    return oidc.OidcSettings(
        issuer=conf.issuer,
        client_id=conf.client_id,
        client_secret=secret,
        groups=dict(conf.groups),
        groups_claim=conf.groups_claim,
        username_claim=conf.username_claim,
        scopes=tuple(conf.scopes),
    )


async def _client_secret(srv: Server, cfg: Config, conf: OidcConfig) -> str | None:
    """The client secret, through the secret providers of `secret_environment` (audited as
    every resolution is); None for a public client."""
    if conf.client_secret_secret is None or conf.secret_environment is None:
        return None
    from conveyor.secrets.base import SecretError
    from conveyor.secrets.resolve import Resolver

    try:
        env = cfg.environment(conf.secret_environment)
        resolver = Resolver(srv.store, cfg.app.name, env.secrets, srv.paths.home, "conveyor-serve")
        found = await resolver.resolve(env.name, [conf.client_secret_secret], purpose="oidc")
    except (ConfigError, SecretError) as exc:
        raise oidc.OidcError(f"the client secret cannot be had: {exc}") from None
    return found[conf.client_secret_secret].value


def _binding_entry(
    app: str, ctx: AuditContext, at: datetime, action: str, b: stored.BindingRecord
) -> dict[str, Any]:
    group = b.created_by.removeprefix(f"{SOURCE}:")
    verb = "gives" if action == "access.grant" else "no longer gives"
    return {
        "at": at,
        "actor": "oidc",
        "action": action,
        "app": app,
        "environment": b.environment,
        "target": b.subject,
        "outcome": "ok",
        "detail": f"OIDC group {group} {verb} {b.role}",
        "data": {"subject": b.subject, "role": str(b.role), "group": group, "source": ctx.source},
    }


def _refused(request: Request, srv: Server, reason: str, subject: str | None = None) -> Response:
    """Audit the refused login, then send the browser back to the login page saying why."""
    who = Principal(subject, (), None, via="oidc") if subject else None
    with contextlib.suppress(ApiError):  # refuse() audits, then raises the API's answer
        refuse(request, 401, "login", None, request.url.path, reason, who)
    response = RedirectResponse(f"/login?error={quote(reason)}", status_code=303)
    response.delete_cookie(STATE_COOKIE, path=CALLBACK_PATH)
    return response


def _continue_page(next_path: str) -> str:
    """A page that moves on to `next_path` from this site: the session cookie is SameSite=
    Strict, and a redirect straight from the provider's site would arrive without it."""
    target = escape(next_path, quote=True)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='0;url={target}'><title>conveyor</title></head>"
        f"<body><p>Logged in. <a href='{target}'>Continue</a></p></body></html>"
    )
