"""The JSON endpoints that act on deployments and environments: deploy, promote, abort,
rollback, retry, and the environment's lock. Each acts through what the CLI uses: the agent's
requests (with the principal as the actor, and the API's facts in `via` for the audit log), and
the lock functions of conveyor.manual_locks. Approvals: conveyor.api.approvals; tokens:
conveyor.api.tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse

from conveyor.api import actions
from conveyor.api.auth import ApiError, authorize, principal_from_request, server, via
from conveyor.api.models import (
    AbortBody,
    Accepted,
    ActionResult,
    DeployBody,
    EnvironmentPatch,
    LockChange,
    PromoteBody,
    RetryBody,
    RollbackBody,
)
from conveyor.config import Config, ConfigError
from conveyor.core.access import Decision, Principal, Role, effective_roles
from conveyor.store import requests as waiting_requests
from conveyor.store.requests import RequestRecord

router = APIRouter()

# Environments with a deploy sent to the agent and not named yet: a second one answers 409
# before the first one shows in the database.
_pending: set[str] = set()
_pending_lock = threading.Lock()
# Idempotency keys being answered now: the same key twice at once waits for the first. An
# entry (its lock, and how many requests hold or wait for it) goes when the last one is done.
_keys: dict[tuple[str, str], tuple[threading.Lock, list[int]]] = {}


@contextlib.contextmanager
def _one_at_a_time(key: tuple[str, str]) -> Iterator[None]:
    with _pending_lock:
        lock, users = _keys.setdefault(key, (threading.Lock(), [0]))
        users[0] += 1
    try:
        with lock:
            yield
    finally:
        with _pending_lock:
            users[0] -= 1
            if users[0] == 0:
                del _keys[key]


@dataclass(frozen=True)
class Found:
    """What `/deployments/{ref}` names: a deployment, or a deploy waiting for approval."""

    environment: str
    version: str
    deployment_id: int | None
    in_progress: bool
    request: RequestRecord | None


def _config(request: Request) -> Config:
    try:
        return server(request).config()
    except (ConfigError, OSError) as exc:
        raise ApiError(503, f"cannot read conveyor.toml: {exc}") from None


def find(request: Request, cfg: Config, ref: str) -> Found:
    """The deployment `ref` names (`17`), or the waiting request (`r3`); 404 otherwise. Needs
    valid credentials first: an unauthenticated caller learns nothing of what exists."""
    principal_from_request(request)
    store = server(request).store
    if ref.startswith("r") and ref[1:].isdigit():
        req = waiting_requests.get(store, int(ref[1:]))
        if req is None or req.app != cfg.app.name:
            raise ApiError(404, f"no deploy request {ref}")
        return Found(req.environment, req.version, req.deployment_id, False, req)
    if not ref.isdigit():
        raise ApiError(404, f"no deployment {ref!r}: ids are numbers (or r<n> for a request)")
    dep = store.get_deployment(int(ref))
    if dep is None or dep.app != cfg.app.name:
        raise ApiError(404, f"no deployment {ref}")
    return Found(dep.environment, dep.version, dep.id, dep.outcome == "in_progress", None)


def live_status(request: Request, env: str) -> dict[str, Any] | None:
    """The agent's status of `env` (health, traffic weights, the rollout's step), the agent
    started first when none runs (as `conveyor status` does); None when it cannot be reached
    (the store's view is shown alone)."""
    srv = server(request)
    result = actions.call(srv, {"op": "status", "env": env}, timeout=10.0)
    data = result.get("data")
    return dict(data) if result.get("ok") and isinstance(data, dict) else None


def _agent_request(
    request: Request, principal: Principal, decision: Decision, body: dict[str, Any]
) -> dict[str, Any]:
    """An agent request as the CLI sends it, for the principal, with the API's facts."""
    return {
        **body,
        "actor": principal.subject,
        "user": principal.subject,
        "via": via(request, principal, decision),
    }


def _status_of(result: dict[str, Any]) -> int:
    """The HTTP status of an agent's refusal."""
    error = str(result.get("error") or "")
    if error.startswith("cannot reach the conveyor agent"):
        return 503
    if int(result.get("exit", 1)) == 2:
        return 422  # bad input: unknown release, already live without force, ...
    return 409  # the environment's state refuses it: a lock, a gate, nothing to act on


def _refusal(result: dict[str, Any]) -> JSONResponse:
    body: dict[str, Any] = {"error": str(result.get("error") or "refused")}
    data = result.get("data") or {}
    if data.get("gates"):
        body["gates"] = data["gates"]
    if result.get("lock"):
        body["lock"] = result["lock"]
    return JSONResponse(body, status_code=_status_of(result))


def _only_approvals(result: dict[str, Any]) -> bool:
    gates = (result.get("data") or {}).get("gates") or []
    unmet = [g for g in gates if not g.get("met")]
    return bool(unmet) and all(g.get("gate") == "approvals" for g in unmet)


def _busy(request: Request, cfg: Config, env: str) -> str | None:
    store = server(request).store
    active = store.in_progress(cfg.app.name, env)
    if active is not None:
        return f"deployment #{active.id} ({active.version}) is in progress in {env}"
    return None


def _launch(
    request: Request,
    cfg: Config,
    principal: Principal,
    decision: Decision,
    env: str,
    version: str,
    force: bool,
    reason: str,
    override_freeze: bool = False,
) -> tuple[int, dict[str, Any]]:
    """Send a deploy to the agent; (HTTP status, body) as soon as it is named or refused."""
    srv = server(request)
    with _pending_lock:
        busy = f"a deploy to {env} is starting" if env in _pending else _busy(request, cfg, env)
        if busy:
            refuse_conflict(request, principal, decision, env, version, busy)
        _pending.add(env)
    try:
        body = {"op": "deploy", "env": env, "version": version, "force": force}
        if reason:
            body["reason"] = reason
        if override_freeze:
            # The agent's own check then applies, as for `deploy --override-freeze`: the
            # caller must be among conveyor.toml's [access] admins (conveyor.promotion.admit).
            body["override_freeze"] = True
        started = actions.start(
            srv, _agent_request(request, principal, decision, body), srv.settings.start_timeout
        )
    finally:
        with _pending_lock:
            _pending.discard(env)
    now = datetime.now(UTC)
    if started.deployment_id is not None:
        waiting_requests.end(
            srv.store,
            cfg.app.name,
            env,
            version,
            waiting_requests.STARTED,
            now,
            started.deployment_id,
        )
        return 202, {
            "status": "started",
            "deployment_id": started.deployment_id,
            "environment": env,
            "version": version,
        }
    result = started.result
    if result is None:
        raise ApiError(
            504,
            f"the agent did not name the deployment within {srv.settings.start_timeout:g}s; "
            f"it may still start: see GET /api/v1/environments/{env}/deployments",
        )
    if _only_approvals(result):
        req = waiting_requests.add(
            srv.store,
            cfg.app.name,
            env,
            version,
            principal.subject,
            principal.token_id,
            reason,
            now,
        )
        return 202, {
            "status": "waiting_for_approval",
            "deployment_id": None,
            "request_id": req.ref,
            "environment": env,
            "version": version,
            "gates": (result.get("data") or {}).get("gates"),
        }
    refusal = _refusal(result)
    return refusal.status_code, json.loads(bytes(refusal.body))


def refuse_conflict(
    request: Request, principal: Principal, decision: Decision, env: str, target: str, why: str
) -> None:
    """409, audited like every refusal (the agent never saw this request)."""
    from conveyor.store import audit

    srv = server(request)
    audit.record(
        srv.store,
        at=datetime.now(UTC),
        actor=principal.subject,
        action="deploy",
        app=srv.app_name(),
        environment=env,
        target=target,
        outcome="refused",
        detail=why,
        data={"via": via(request, principal, decision)},
    )
    raise ApiError(409, why)


def _request_hash(request: Request, body: dict[str, Any]) -> str:
    text = json.dumps([request.method, request.url.path, body], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@router.post(
    "/environments/{env}/deployments",
    status_code=202,
    response_model=Accepted,
    tags=["deployments"],
    responses={
        409: {"description": "a deployment is active, the environment is locked, or a gate refuses"}
    },
)
def deploy(
    request: Request,
    env: str,
    body: DeployBody,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> Response:
    """Deploy a release; 202 with the deployment's id once the agent started it (follow it on
    /events or /deployments/{id}). Refused only for missing approvals: 202 with
    `status: waiting_for_approval` and a request id (`r<n>`) in the approvals inbox."""
    from conveyor.store import access as stored

    cfg = _config(request)
    _known(cfg, env)
    principal, decision = authorize(request, "deploy", env, body.version)
    if body.override_freeze:
        decision = _may_override(request, principal, env, body)

    def launch() -> tuple[int, dict[str, Any]]:
        return _launch(
            request,
            cfg,
            principal,
            decision,
            env,
            body.version,
            body.force,
            body.reason,
            body.override_freeze,
        )

    if idempotency_key is None:
        status, answer = launch()
        return JSONResponse(answer, status_code=status)
    store = server(request).store
    # override_freeze counts only when set: a key used before the field existed matches still.
    digest = _request_hash(
        request, body.model_dump(exclude=None if body.override_freeze else {"override_freeze"})
    )
    with _one_at_a_time((principal.subject, idempotency_key)):
        seen = stored.get_idempotent(store, principal.subject, idempotency_key)
        if seen is not None:
            if seen.request_hash != digest:
                raise ApiError(
                    422,
                    f"Idempotency-Key {idempotency_key!r} was used for another request: "
                    "use a new key for a new request",
                )
            return JSONResponse(seen.response["body"], status_code=int(seen.response["status"]))
        status, answer = launch()
        if answer.get("status") == "started":
            # Remembered once a deployment started: a refusal, or a deploy waiting for
            # approval, may be sent again with the same key (and then start).
            stored.put_idempotent(
                store,
                stored.IdempotencyRecord(
                    actor=principal.subject,
                    key=idempotency_key,
                    environment=env,
                    request_hash=digest,
                    deployment_id=answer.get("deployment_id"),
                    response={"status": status, "body": answer},
                    created_at=datetime.now(UTC),
                ),
            )
    return JSONResponse(answer, status_code=status)


def _may_override(request: Request, principal: Principal, env: str, body: DeployBody) -> Decision:
    """A deploy through a freeze window, as `deploy --override-freeze` allows it: with a reason
    (422 without), by the admin role on `env` (403 otherwise, audited). The agent then checks,
    as for the CLI, that the caller is among conveyor.toml's [access] admins. The decision in
    the admin role, for the audit log."""
    from conveyor.api.auth import refuse

    if not body.reason.strip():
        raise ApiError(422, "override_freeze needs a reason (it is recorded)")
    if Role.admin not in effective_roles(principal, env):
        refuse(
            request,
            403,
            "freeze.override",
            env,
            body.version,
            f"override_freeze needs the admin role on {env}; this request holds "
            + (", ".join(sorted(effective_roles(principal, env))) or "no role")
            + " there",
            principal,
        )
    return Decision(True, Role.admin, "")


def _known(cfg: Config, env: str) -> None:
    if env not in cfg.environments:
        names = ", ".join(sorted(cfg.environments))
        raise ApiError(404, f"unknown environment {env!r} (known: {names})")


def _deployment(
    request: Request, cfg: Config, ref: str, action: str
) -> tuple[Found, Principal, Decision]:
    found = find(request, cfg, ref)
    if found.request is not None:
        raise ApiError(409, f"{ref} is a deploy waiting for approval, not a deployment")
    principal, decision = authorize(request, action, found.environment, ref)
    return found, principal, decision


def _quick(
    request: Request, principal: Principal, decision: Decision, body: dict[str, Any]
) -> dict[str, Any]:
    srv = server(request)
    result = actions.call(srv, _agent_request(request, principal, decision, body))
    if not result.get("ok"):
        raise ApiError(_status_of(result), str(result.get("error") or "refused"))
    return {"ok": True, "data": result.get("data") or {}}


@router.post("/deployments/{ref}/promote", response_model=ActionResult, tags=["deployments"])
def promote(request: Request, ref: str, body: PromoteBody | None = None) -> dict[str, Any]:
    """Promote the paused canary (to its next step; `full`: to 100%)."""
    found, principal, decision = _deployment(request, _config(request), ref, "promote")
    _current(found, ref)
    full = body.full if body is not None else False
    return _quick(
        request, principal, decision, {"op": "promote", "env": found.environment, "full": full}
    )


@router.post("/deployments/{ref}/abort", response_model=ActionResult, tags=["deployments"])
def abort(request: Request, ref: str, body: AbortBody | None = None) -> dict[str, Any]:
    """Abort the deployment in progress: traffic back to the stable version."""
    found, principal, decision = _deployment(request, _config(request), ref, "abort")
    _current(found, ref)
    reason = body.reason if body is not None else "by request"
    return _quick(
        request, principal, decision, {"op": "abort", "env": found.environment, "reason": reason}
    )


def _current(found: Found, ref: str) -> None:
    if not found.in_progress:
        raise ApiError(409, f"deployment {ref} is not in progress")


@router.post(
    "/deployments/{ref}/rollback", status_code=202, response_model=Accepted, tags=["deployments"]
)
def rollback(request: Request, ref: str, body: RollbackBody | None = None) -> Response:
    """Roll back the environment of deployment `ref`, when `ref` is what is live there now
    (409 otherwise): traffic back to the standby, or the previous release started again, with
    the secret versions it ran with (`keep_secrets`: the current ones). `migrations: down`
    then undoes the migrations the rolled-back deployment applied (`force`: even Down sections
    that drop data). What `conveyor rollback` sends the agent. To go back to any earlier
    release, deploy it (POST /environments/{env}/deployments or retry)."""
    cfg = _config(request)
    found, principal, decision = _deployment(request, cfg, ref, "rollback")
    body = body if body is not None else RollbackBody.model_validate({})
    if body.force and body.migrations != "down":
        raise ApiError(422, 'force only applies to "migrations": "down"')
    store = server(request).store
    live = {
        i.deployment_id
        for i in store.instances(cfg.app.name, found.environment)
        if i.role == "active"
    }
    if found.deployment_id not in live and not found.in_progress:
        raise ApiError(
            409,
            f"deployment {ref} is not what runs in {found.environment} now: roll back the live "
            "one, or deploy the release you want",
        )
    srv = server(request)
    req = _agent_request(
        request,
        principal,
        decision,
        {
            "op": "rollback",
            "env": found.environment,
            "keep_secrets": body.keep_secrets,
            "migrations": body.migrations,
            "force": body.force,
        },
    )
    started = actions.start(srv, req, srv.settings.start_timeout)
    result = started.result
    if started.deployment_id is None and (result is None or not result.get("ok")):
        if result is None:
            raise ApiError(504, "the agent did not answer the rollback in time")
        return _refusal(result)
    data = (result or {}).get("data") or {}
    answer = {
        "status": "started" if result is None else "done",
        "deployment_id": started.deployment_id,
        "environment": found.environment,
        "version": data.get("version"),
    }
    if "migrations_down" in data:
        answer["migrations_down"] = data["migrations_down"]  # the migrations undone
    return JSONResponse(answer, status_code=202)


@router.post(
    "/deployments/{ref}/retry", status_code=202, response_model=Accepted, tags=["deployments"]
)
def retry(request: Request, ref: str, body: RetryBody | None = None) -> Response:
    """Deploy the same release to the same environment again (`force`: even when live)."""
    cfg = _config(request)
    found, principal, decision = _deployment(request, cfg, ref, "retry")
    force = body.force if body is not None else False
    status, answer = _launch(
        request,
        cfg,
        principal,
        decision,
        found.environment,
        found.version,
        force,
        f"retry of #{ref}",
    )
    return JSONResponse(answer, status_code=status)


# --- the environment's lock ------------------------------------------------------------------------


@router.patch("/environments/{env}", response_model=LockChange, tags=["environments"])
def update_environment(request: Request, env: str, body: EnvironmentPatch) -> dict[str, Any]:
    """Admin: lock the environment (`{"locked": true, "reason": "..."}`) or unlock it
    (`{"locked": false}`; `force` also breaks a running operation's lock). That is all that may
    change at runtime: gates, services and rollouts are conveyor.toml's, reviewed like code."""
    from conveyor import manual_locks

    cfg = _config(request)
    _known(cfg, env)
    principal, decision = authorize(request, "environment.update", env, env)
    store = server(request).store
    facts = {"via": via(request, principal, decision)}
    try:
        if body.locked:
            if not body.reason.strip():
                raise ApiError(422, "a lock needs a reason: it is what others see when refused")
            lock = manual_locks.lock(
                store, cfg.app.name, env, principal.subject, body.reason, facts
            )
            return {"environment": env, "lock": lock.to_json()}
        gone = manual_locks.unlock(store, cfg.app.name, env, principal.subject, body.force, facts)
    except manual_locks.LockRefused as exc:
        raise ApiError(409, str(exc)) from None
    return {"environment": env, "lock": None, "released": gone.to_json() if gone else None}
