"""The JSON endpoints under /api/v1 that read: who am I, the overview, environments,
releases, deployments, approvals, the audit log, the event stream. The ones that act are in
conveyor.api.write. Handlers are plain `def` where they query the store (FastAPI runs them in
its thread pool), `async def` where they stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from conveyor.api import approvals, tokens, views, write
from conveyor.api.auth import (
    ApiError,
    authorize,
    csrf_token,
    principal_from_request,
    recheck,
    server,
)
from conveyor.api.models import (
    AuditPage,
    Dashboard,
    DeploymentDetail,
    DeploymentPage,
    EnvironmentDetail,
    EnvironmentSummary,
    Inbox,
    Me,
    Permissions,
    Release,
    ReleaseDetail,
)
from conveyor.config import Config, ConfigError
from conveyor.core.access import decide, permissions

router = APIRouter()
router.include_router(write.router)
router.include_router(approvals.router)
router.include_router(tokens.router)


def config(request: Request) -> Config:
    try:
        return server(request).config()
    except (ConfigError, OSError) as exc:
        raise ApiError(503, f"cannot read conveyor.toml: {exc}") from None


def known_env(cfg: Config, env: str) -> None:
    if env not in cfg.environments:
        names = ", ".join(sorted(cfg.environments))
        raise ApiError(404, f"unknown environment {env!r} (known: {names})")


def readable(request: Request, cfg: Config) -> list[str]:
    principal = principal_from_request(request)
    return [e for e in sorted(cfg.environments) if decide(principal, "read", e).allowed]


@router.get("/me", response_model=Me, tags=["access"])
def me(request: Request) -> dict[str, Any]:
    """Who the credentials act for, their bindings, and the CSRF token for the browser."""
    p = principal_from_request(request)
    return {
        "subject": p.subject,
        "via": p.via,
        "token_id": p.token_id,
        "scope": (
            {"role": str(p.scope.role), "environment": p.scope.environment} if p.scope else None
        ),
        "bindings": [{"role": str(b.role), "environment": b.environment} for b in p.bindings],
        "csrf": csrf_token(request),
    }


@router.get("/me/permissions", response_model=Permissions, tags=["access"])
def my_permissions(request: Request, environment: str | None = None) -> dict[str, Any]:
    """Every action and whether these credentials may do it on `environment` (None: all)."""
    p = principal_from_request(request)
    return {"environment": environment, "permissions": permissions(p, environment)}


@router.get("/dashboard", response_model=Dashboard, tags=["overview"])
def dashboard(request: Request) -> Response:
    """Environments by services (those the credentials may read): release, state, since when,
    and the needs-attention flags."""
    cfg = config(request)
    allowed = set(readable(request, cfg))
    data = views.dashboard(server(request).store, cfg)
    data["environments"] = [e for e in data["environments"] if e["name"] in allowed]
    data["services"] = [s for s in data["services"] if s["environment"] in allowed]
    data["waiting"] = [w for w in data["waiting"] if w["environment"] in allowed]
    # Returned as it is (the model documents it): validating 600 rows again costs more than
    # building them.
    return JSONResponse(data)


@router.get("/approvals", response_model=Inbox, tags=["approvals"])
def approvals_inbox(request: Request) -> dict[str, Any]:
    """Deploys waiting for approval, across the environments the credentials may read."""
    cfg = config(request)
    allowed = set(readable(request, cfg))
    items = views.approvals_inbox(server(request).store, cfg)
    return {"waiting": [i for i in items if i["environment"] in allowed]}


@router.get("/environments", response_model=list[EnvironmentSummary], tags=["environments"])
def environments(request: Request) -> list[dict[str, Any]]:
    cfg = config(request)
    allowed = set(readable(request, cfg))
    return [e for e in views.environments(server(request).store, cfg) if e["name"] in allowed]


@router.get("/environments/{env}", response_model=EnvironmentDetail, tags=["environments"])
def environment(request: Request, env: str) -> dict[str, Any]:
    """Gates, lock, what runs, recent history; `live`: the agent's status (health, weights)."""
    cfg = config(request)
    known_env(cfg, env)
    authorize(request, "read", env, env)
    data = views.environment(server(request).store, cfg, env)
    data["live"] = write.live_status(request, env)
    return data


@router.get("/releases", response_model=list[Release], tags=["releases"])
def releases(request: Request) -> list[dict[str, Any]]:
    principal_from_request(request)
    return views.releases(server(request).store, config(request))


@router.get("/releases/{version}", response_model=ReleaseDetail, tags=["releases"])
def release(request: Request, version: str) -> dict[str, Any]:
    principal_from_request(request)
    found = views.release(server(request).store, config(request), version)
    if found is None:
        raise ApiError(404, f"unknown release {version!r}")
    return found


@router.get("/environments/{env}/deployments", response_model=DeploymentPage, tags=["deployments"])
def deployments(
    request: Request,
    env: str,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=views.MAX_LIMIT)] = 50,
) -> dict[str, Any]:
    """The environment's deployments, newest first, a page at a time (keyset on the id)."""
    cfg = config(request)
    known_env(cfg, env)
    authorize(request, "read", env, env)
    return views.deployments_page(
        server(request).store, cfg.app.name, env, _int_cursor(cursor), limit
    )


def _int_cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    try:
        return int(cursor)
    except ValueError:
        raise ApiError(422, f"cursor {cursor!r} is not one this API gave") from None


@router.get(
    "/deployments/{ref}", response_model=DeploymentDetail | dict[str, Any], tags=["deployments"]
)
def deployment(request: Request, ref: str) -> dict[str, Any]:
    """A deployment (by id), or a deploy waiting for approval (`r<id>`)."""
    cfg = config(request)
    found = write.find(request, cfg, ref)
    authorize(request, "read", found.environment, ref)
    if found.request is not None:
        return found.request.to_json()
    assert found.deployment_id is not None
    live = None
    if found.in_progress:
        live = write.live_status(request, found.environment)
    data = views.deployment(server(request).store, cfg, found.deployment_id, live)
    if data is None:
        raise ApiError(404, f"no deployment {ref}")
    return data


@router.get("/audit", response_model=AuditPage, tags=["audit"])
def audit(
    request: Request,
    actor: str | None = None,
    environment: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=views.MAX_LIMIT)] = 100,
) -> dict[str, Any]:
    """The audit log, newest first (keyset on the id). Without `environment`, reading it needs
    a role on every environment."""
    authorize(request, "read", environment, "audit")
    return views.audit_page(
        server(request).store,
        actor=actor,
        environment=environment,
        action=action,
        since=since,
        cursor=_int_cursor(cursor),
        limit=limit,
    )


@router.get("/audit/export", tags=["audit"])
def audit_export(
    request: Request,
    actor: str | None = None,
    environment: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
) -> StreamingResponse:
    """Every matching entry, oldest first, as JSON lines (streamed; admin)."""
    authorize(request, "audit.export", environment, "audit")
    store = server(request).store

    def lines() -> Iterator[bytes]:
        for batch in views.audit_batches(
            store, actor=actor, environment=environment, action=action, since=since
        ):
            yield "".join(json.dumps(e) + "\n" for e in batch).encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/events", tags=["events"])
async def events(
    request: Request,
    environment: str | None = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_query: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> StreamingResponse:
    """Server-Sent Events: deployment, step, traffic, analysis and approval events of the
    environments the credentials may read; `Last-Event-ID` replays what was missed (or the
    `last_event_id` query parameter: a browser's new EventSource cannot set the header; the
    header wins when both are given, as an EventSource's own reconnection sends it)."""
    last_event_id = last_event_id or last_event_id_query
    from starlette.concurrency import run_in_threadpool

    principal = await run_in_threadpool(principal_from_request, request)
    if environment is not None:
        await run_in_threadpool(authorize, request, "read", environment, "events")
    hub = request.app.state.hub
    return StreamingResponse(
        hub.subscribe(principal, environment, last_event_id, recheck(request)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
