"""What each page shows: the API's read models (conveyor.api.views, the same data as the JSON
endpoints) shaped for the templates. Nothing here queries the store on its own account except
the colors' versions, to name which version each router weight goes to.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from conveyor.api import views
from conveyor.api.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    ApiError,
    principal_from_request,
    server,
)
from conveyor.api.auth import csrf_token as api_csrf_token
from conveyor.api.write import live_status
from conveyor.config import Config
from conveyor.core.access import Principal, decide
from conveyor.store import requests as waiting_requests
from conveyor.web.render import age

__all__ = ["ATTENTION", "CSRF_HEADER", "LOGIN_ACTION"]

ATTENTION = ("waiting_for_approval", "paused", "degraded", "rolled_back")
LOGIN_ACTION = "/login"  # the API's form endpoint (conveyor.api.auth.login)
# Phases in which the new version's desired share is all of the traffic (the last step).
SWITCHED = frozenset({"switching", "draining", "baking", "succeeded"})
PROMOTABLE = frozenset({"step", "awaiting_promotion", "baking"})


def principal(request: Request) -> Principal | None:
    """Who the page is for; None without credentials (the page sends them to /login). Bad
    credentials (expired, revoked) are audited by the API's check, then also None."""
    if not request.cookies.get(SESSION_COOKIE) and not request.headers.get("authorization"):
        return None
    try:
        return principal_from_request(request)
    except ApiError:
        return None


def csrf_token(request: Request) -> str:
    return api_csrf_token(request)


def config(request: Request) -> Config:
    return server(request).config()


def readable(who: Principal, cfg: Config) -> list[str]:
    return [e for e in sorted(cfg.environments) if decide(who, "read", e).allowed]


# --- the overview ------------------------------------------------------------------------------


def overview(request: Request, who: Principal, attention_only: bool) -> dict[str, Any]:
    """views.dashboard as a grid: one row per service, one cell per environment.

    The cells are the view's own rows, finished in place (labels, age, link): a page of
    services x environments cells allocates one list per service beyond what the view made, and
    what is the same for a whole environment (its flags, the link to what runs there) is made
    once. Fewer objects per request means fewer garbage collections in the server."""
    cfg = config(request)
    envs = readable(who, cfg)
    wanted = set(envs)
    data = views.dashboard(server(request).store, cfg)
    now = datetime.now(UTC)
    links = {e["name"]: _deploying(e["latest_deployment"]) for e in data["environments"]}
    flags = {
        e["name"]: tuple(n.replace("_", " ") for n in ATTENTION if e["attention"].get(n))
        for e in data["environments"]
    }
    grid: dict[str, dict[str, dict[str, Any]]] = {}
    for cell in data["services"]:
        env = cell["environment"]
        if env not in wanted:
            continue
        cell["css"] = cell["state"].replace(" ", "_")
        cell["age"] = age(cell["since"], now)
        cell["flags"] = flags[env]
        cell["deploying"] = links[env]  # else the template links the live deployment
        grid.setdefault(cell["service"], {})[env] = cell
    rows = []
    for svc, by_env in grid.items():
        row = [by_env.get(env) or _empty(env) for env in envs]
        if attention_only and not any(c["flags"] for c in row):
            continue
        rows.append({"service": svc, "cells": row})
    waiting = [w for w in data["waiting"] if w["environment"] in wanted]
    return {"app": data["app"], "environments": envs, "rows": rows, "waiting": waiting}


def _deploying(latest: dict[str, Any] | None) -> tuple[str, str] | None:
    """The link every cell of an environment shows while a deployment runs there."""
    if latest is None or latest["outcome"] != "in_progress":
        return None
    return f"/deployments/{latest['id']}", f"deploying {latest['version']} (#{latest['id']})"


def _empty(env: str) -> dict[str, Any]:
    return {
        "environment": env,
        "release": None,
        "state": "not deployed",
        "css": "not_deployed",
        "since": None,
        "age": "",
        "flags": (),
        "deploying": None,
        "deployment_id": None,
    }


# --- one deployment ------------------------------------------------------------------------------


def deployment(request: Request, ref: str) -> dict[str, Any] | None:
    """The deployment `ref` (an id), shaped for the page; None when there is none."""
    if not ref.isdigit():
        return None
    cfg = config(request)
    store = server(request).store
    rec = store.get_deployment(int(ref))
    if rec is None or rec.app != cfg.app.name:
        return None
    live = live_status(request, rec.environment) if rec.outcome == "in_progress" else None
    data = views.deployment(store, cfg, rec.id, live)
    if data is not None and live is not None and data["outcome"] != "in_progress":
        # It ended between the first read and this one: what the agent said of it is old.
        live = None
        data = views.deployment(store, cfg, rec.id, None)
    if data is None:
        return None
    outcome = str(data["outcome"])
    current = (live or {}).get("deployment") or {}
    running, phase = progress(outcome, current, rec.id)
    colors = {
        (i.service, i.color): i.version for i in store.instances(cfg.app.name, rec.environment)
    }
    data["phase"] = phase
    plan = next((e for e in data["events"] if e["state"] == "plan"), None)
    data["strategy"] = (plan or {}).get("data", {}).get("strategy")
    data["waiting"] = current.get("waiting") or None if running else None
    data["traffic"] = _traffic(data, rec.environment, phase, live, colors)
    data["timeline"] = _timeline(data)
    data["checks"] = _checks(data["analysis"])
    actions = []
    if running and phase in PROMOTABLE:
        actions.append("promote")
    if running:
        actions.append("abort")
    live_ids = {i.deployment_id for i in store.instances(cfg.app.name, rec.environment)}
    if outcome == "succeeded" and rec.id in live_ids and rec.previous_version:
        actions.append("rollback")
    if outcome in ("failed", "aborted", "rolled_back"):
        actions.append("retry")
    data["actions"] = actions
    return data


def progress(outcome: str, current: dict[str, Any], dep_id: int) -> tuple[bool, str]:
    """Whether deployment `dep_id` is running as the agent's status `current` shows it, and
    its phase. Its own record (`outcome`, read last) decides: one that ended meanwhile shows its
    outcome and where its traffic ended, never a stale phase (seen: a page rendered as the
    rollout finished showed "succeeded" and no traffic bar at all)."""
    running = outcome == "in_progress" and current.get("id") == dep_id
    return running, (str(current.get("phase") or "") if running else outcome)


def _traffic(
    data: dict[str, Any],
    env: str,
    phase: str,
    live: dict[str, Any] | None,
    colors: dict[tuple[str, str], str],
) -> list[dict[str, Any]]:
    """Per web service: the new version's desired share (what the rollout asks for now) and its
    actual share (what the router applies, from the agent), each with the rest on the old."""
    version = data["version"]
    if phase in SWITCHED:
        desired: int | None = 100
    elif phase == "step":
        desired = int(data["traffic"].get("desired") or 0)
    elif phase in ("rolled_back", "aborted", "failed", "rolling_back"):
        desired = 0
    else:
        desired = 0 if data["outcome"] == "in_progress" else None
    actual_by_service: dict[str, dict[str, int]] = data["traffic"].get("actual") or {}
    out = []
    services = sorted(actual_by_service) or sorted(
        {str(e["service"]) for e in data["steps"] if e.get("service")}
    )
    for svc in services:
        weights = actual_by_service.get(svc)
        if weights:
            total = sum(weights.values()) or 1
            new = sum(w for c, w in weights.items() if colors.get((svc, c)) == version)
            actual: int | None = round(100 * new / total)
        else:
            actual = desired  # finished: the router holds what the outcome says
        if desired is None or actual is None:
            continue
        out.append(
            {
                "service": svc,
                "desired": {"new": desired, "old": 100 - desired},
                "actual": {"new": actual, "old": 100 - actual},
            }
        )
    return out


def _timeline(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The planned steps, each done, current or pending."""
    plan = next((e for e in data["events"] if e["state"] == "plan"), None)
    planned = (plan or {}).get("data", {}).get("steps") or []
    reached = sum(1 for e in data["events"] if e["state"] == "step")
    finished = data["outcome"] != "in_progress"
    steps = []
    for i, step in enumerate(planned):
        pause = step.get("pause")
        label = f"{step['weight']}% of traffic" + (f", pause {pause}" if pause is not None else "")
        if i < reached - 1 or (i == reached - 1 and finished):
            state = "done"
        elif i == reached - 1:
            state = "current"
        else:
            state = "pending"
        steps.append({"label": label, "state": state})
    return steps


def _checks(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """Each configured check with its threshold and its last measurement(s)."""
    out = []
    measured = analysis.get("measurements") or []
    for check in analysis.get("checks") or []:
        limit = [f"max {check['max']}" if check.get("max") is not None else ""]
        limit.append(f"min {check['min']}" if check.get("min") is not None else "")
        mine = [
            m
            for m in measured
            if m.get("check") in (check["check"], check["metric"])
            or m.get("name") in (check["check"], check["metric"])
            or m.get("metric") == check["metric"]
        ]
        out.append(
            {
                "name": check["check"],
                "threshold": ", ".join(x for x in limit if x) or "—",
                "measurements": [
                    {
                        "value": m.get("value"),
                        "verdict": m.get("verdict", ""),
                        "at": m.get("at", ""),
                        "detail": m.get("detail", ""),
                    }
                    for m in mine[-5:]
                ],
            }
        )
    return out


# --- deploys waiting for approval ---------------------------------------------------------------


def inbox(request: Request, who: Principal) -> list[dict[str, Any]]:
    """views.approvals_inbox, with what this viewer may do about each."""
    cfg = config(request)
    envs = set(readable(who, cfg))
    store = server(request).store
    items = []
    for item in views.approvals_inbox(store, cfg):
        if item["environment"] not in envs:
            continue
        items.append(_waiting(request, cfg, who, item))
    return items


def waiting(request: Request, who: Principal, ref: str) -> dict[str, Any] | None:
    """The deploy request `ref` (`r<n>`), waiting or ended, shaped like an inbox item."""
    if not (ref.startswith("r") and ref[1:].isdigit()):
        return None
    cfg = config(request)
    store = server(request).store
    req = waiting_requests.get(store, int(ref[1:]))
    if req is None or req.app != cfg.app.name:
        return None
    found = next((i for i in views.approvals_inbox(store, cfg) if i["id"] == ref), None)
    return _waiting(request, cfg, who, found or req.to_json())


def _waiting(request: Request, cfg: Config, who: Principal, item: dict[str, Any]) -> dict[str, Any]:
    env = item["environment"]
    store = server(request).store
    release = views.release(store, cfg, item["version"]) or {"approvals": []}
    approvals = [
        a for a in release["approvals"] if a["environment"] == env and not a["withdrawn_at"]
    ]
    gates = item.get("gates") or []
    unmet = [g for g in gates if not g["met"]]
    mine = who.subject == item["requested_by"]
    may_decide = decide(who, "approve", env)
    why_not = "you asked for this deploy: someone else approves it" if mine else may_decide.reason
    return {
        **item,
        "approvals": approvals,
        "gates": gates,
        "ready": item.get("state") == waiting_requests.WAITING and not unmet and bool(gates),
        "can_decide": may_decide.allowed and not mine,
        "can_deploy": decide(who, "deploy", env).allowed,
        "why_not": why_not,
    }


# --- one environment -----------------------------------------------------------------------------


def environment(request: Request, env: str, cursor: str | None) -> dict[str, Any] | None:
    cfg = config(request)
    if env not in cfg.environments:
        return None
    store = server(request).store
    data = views.environment(store, cfg, env)
    page = views.deployments_page(
        store, cfg.app.name, env, int(cursor) if cursor and cursor.isdigit() else None, 25
    )
    live = sorted(
        {i["version"] for s in data["services"] for i in s["instances"] if i["role"] == "active"}
    )
    releases = [r["version"] for r in views.releases(store, cfg)][-50:]
    return {
        **data,
        "releases": list(reversed(releases)),  # newest first
        "history": page["deployments"],
        "next_cursor": page["next_cursor"],
        "live_versions": live,
        "gate_lines": _gate_lines(data["gates"]),
    }


def _gate_lines(gates: dict[str, Any]) -> list[dict[str, str]]:
    lines = []
    if gates.get("after"):
        lines.append({"name": "after", "text": f"succeeded in {gates['after']} first"})
    if gates.get("soak"):
        lines.append({"name": "soak", "text": f"live {gates['soak']:g}s there without a rollback"})
    for check in gates.get("checks") or []:
        lines.append({"name": "check", "text": f"check {check} passed"})
    if gates.get("approvals"):
        who = ", ".join(gates.get("approvers") or []) or "anyone but the deployer"
        lines.append({"name": "approvals", "text": f"{gates['approvals']} approval(s) by {who}"})
    for window in gates.get("freeze") or []:
        lines.append({"name": "freeze", "text": f"{window} ({gates.get('timezone', 'UTC')})"})
    if gates.get("require_tag"):
        lines.append({"name": "tag", "text": "only releases of a tagged commit"})
    return lines


# --- audit and tokens ------------------------------------------------------------------------------


def audit(request: Request, filters: dict[str, Any], cursor: str | None) -> dict[str, Any]:
    from datetime import datetime

    since = None
    if filters.get("since"):
        since = datetime.fromisoformat(str(filters["since"]).replace("Z", "+00:00"))
    return views.audit_page(
        server(request).store,
        actor=filters.get("actor") or None,
        environment=filters.get("environment") or None,
        action=filters.get("action") or None,
        since=since,
        cursor=int(cursor) if cursor and cursor.isdigit() else None,
        limit=100,
    )


def tokens(request: Request, who: Principal) -> list[dict[str, Any]]:
    """The viewer's own tokens (what GET /api/v1/tokens answers)."""
    from conveyor.store import access as stored

    return [t.to_json() for t in stored.list_tokens(server(request).store, who.subject)]
