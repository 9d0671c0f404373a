"""What each page shows, as plain dicts the templates read.

INTERIM: read from the store directly until the API's read models (conveyor.api.views) land in
this branch; then each function here becomes a translation of the matching view.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conveyor.config import Config
from conveyor.core.access import Binding, Principal, Role, decide
from conveyor.engine.status import measurements
from conveyor.store import audit as audit_log
from conveyor.store.db import DeploymentRecord, EventRecord, Store
from conveyor.store.facts import FactStore

ATTENTION = ("waiting_for_approval", "paused", "degraded", "rolled_back")
_STEP = re.compile(r"step (\d+)/\d+: (\d+)% of traffic")


@dataclass(frozen=True)
class Source:
    store: Store
    config: Config


def _cell_state(dep: DeploymentRecord | None, events: list[EventRecord]) -> tuple[str, list[str]]:
    if dep is None:
        return "none", []
    flags: list[str] = []
    if dep.outcome == "in_progress":
        last = events[-1].state if events else ""
        if last in ("paused", "waiting"):
            flags.append("paused")
        return ("paused" if flags else "in_progress"), flags
    if dep.outcome == "rolled_back":
        flags.append("rolled_back")
    return dep.outcome, flags


def overview(src: Source, attention_only: bool) -> dict[str, Any]:
    cfg = src.config
    envs = list(cfg.environments)
    services = list(cfg.services)
    app = cfg.app.name
    rows: list[dict[str, Any]] = []
    per_env: dict[str, dict[str, Any]] = {}
    for env in envs:
        latest = src.store.list_deployments(app, env, limit=1)
        dep = latest[0] if latest else None
        events = src.store.events(dep.id) if dep and dep.outcome == "in_progress" else []
        state, flags = _cell_state(dep, events)
        active = {i.service: i for i in src.store.instances(app, env) if i.role == "active"}
        per_env[env] = {"dep": dep, "state": state, "flags": flags, "active": active}
    for svc in services:
        cells = []
        for env in envs:
            info = per_env[env]
            inst = info["active"].get(svc)
            dep = info["dep"]
            cells.append(
                {
                    "environment": env,
                    "version": inst.version if inst else None,
                    "since": inst.started_at.isoformat() if inst else None,
                    "state": info["state"],
                    "attention": info["flags"],
                    "deployment_id": dep.id if dep else None,
                }
            )
        if attention_only and not any(c["attention"] for c in cells):
            continue
        rows.append({"service": svc, "cells": cells})
    return {"app": app, "environments": envs, "rows": rows}


def _steps(events: list[EventRecord]) -> tuple[list[dict[str, Any]], int | None]:
    plan = next((e for e in events if e.state == "plan"), None)
    planned = plan.data.get("steps", []) if plan else []
    reached = [m for e in events if e.state == "step" and (m := _STEP.search(e.reason))]
    current = int(reached[-1][1]) - 1 if reached else None
    weight = int(reached[-1][2]) if reached else None
    steps = []
    for i, step in enumerate(planned):
        label = f"{step['weight']}% of traffic" + (
            f", pause {step['pause']}" if step.get("pause") is not None else ""
        )
        state = "pending" if current is None or i > current else "done"
        if i == current:
            state = "current"
        steps.append({"label": label, "state": state})
    return steps, weight


def deployment(src: Source, dep_id: int) -> dict[str, Any] | None:
    dep = src.store.get_deployment(dep_id)
    if dep is None:
        return None
    events = src.store.events(dep_id)
    steps, weight = _steps(events)
    if any(e.state in ("switched", "succeeded") for e in events):
        weight = 100
    if any(e.state == "switched_back" for e in events) or dep.outcome in ("aborted",):
        weight = 0
    services = sorted({str(e.data["service"]) for e in events if e.data.get("service")})
    traffic = []
    if weight is not None:
        for svc in services or ["web"]:
            split = {"new": weight, "old": 100 - weight}
            traffic.append({"service": svc, "desired": split, "actual": split})
    last = events[-1] if events else None
    waiting = last.reason if last and last.state in ("paused", "waiting") else None
    in_progress = dep.outcome == "in_progress"
    actions = ["promote", "abort"] if in_progress else []
    if dep.outcome == "succeeded" and dep.previous_version:
        actions.append("rollback")
    if dep.outcome in ("failed", "aborted"):
        actions.append("retry")
    facts = FactStore(src.store)
    approvals = [
        {"actor": a.actor, "decision": a.decision, "comment": a.comment, "at": a.at.isoformat()}
        for a in facts.approvals(dep.app, dep.environment)
        if a.version == dep.version and not a.withdrawn
    ]
    checks = [
        {
            "name": m.get("name", "?"),
            "threshold": m.get("threshold", m.get("max", "")),
            "measurements": [
                {"value": m.get("value"), "verdict": m.get("verdict"), "at": m.get("at", "")}
            ],
        }
        for m in measurements(events)
    ]
    return {
        "id": dep.id,
        "app": dep.app,
        "environment": dep.environment,
        "version": dep.version,
        "previous_version": dep.previous_version,
        "kind": dep.kind,
        "outcome": dep.outcome,
        "strategy": next((e.data.get("strategy") for e in events if e.state == "plan"), None),
        "started_at": dep.started_at.isoformat(),
        "finished_at": dep.finished_at.isoformat() if dep.finished_at else None,
        "reason": dep.reason,
        "waiting": waiting,
        "steps": steps,
        "traffic": traffic,
        "analysis": checks,
        "approvals": approvals,
        "actions": actions,
        "events": [{"at": e.at.isoformat(), "state": e.state, "reason": e.reason} for e in events],
    }


def environment(src: Source, env: str) -> dict[str, Any] | None:
    cfg = src.config
    if env not in cfg.environments:
        return None
    app = cfg.app.name
    history = src.store.list_deployments(app, env, limit=50)
    resolved = cfg.environment(env)
    gates = resolved.gates
    lines = []
    if gates.after:
        lines.append({"name": "after", "text": f"a release must have succeeded in {gates.after}"})
    if gates.approvals:
        lines.append({"name": "approvals", "text": f"{gates.approvals} approval(s)"})
    if gates.soak:
        lines.append({"name": "soak", "text": f"{gates.soak:g}s in the previous environment"})
    for check in gates.checks:
        lines.append({"name": "check", "text": check})
    for window in gates.freeze:
        lines.append({"name": "freeze", "text": window})
    from conveyor.store import locks

    with src.store.reading() as session:
        lock = locks.get(session, app, env)
    active = [i for i in src.store.instances(app, env) if i.role == "active"]
    return {
        "name": env,
        "lock": lock.to_json() if lock else None,
        "gates": lines,
        "live_version": active[0].version if active else None,
        "history": [
            {
                "id": d.id,
                "version": d.version,
                "kind": d.kind,
                "outcome": d.outcome,
                "started_at": d.started_at.isoformat(),
                "reason": d.reason,
            }
            for d in history
        ],
        "next_cursor": None,
    }


def audit(src: Source, filters: dict[str, Any]) -> list[dict[str, Any]]:
    since = datetime.fromisoformat(filters["since"]) if filters.get("since") else None
    rows = audit_log.entries(
        src.store,
        environment=filters.get("environment") or None,
        actor=filters.get("actor") or None,
        action=filters.get("action") or None,
        since=since,
        limit=200,
    )
    return [{**r.to_json(), "at": r.at.isoformat()} for r in reversed(rows)]


# --- INTERIM: who asks, and where the data is, until conveyor.api.auth and the server's state
# land in this branch (then these call them).

CSRF_HEADER = "X-CSRF-Token"
LOGIN_ACTION = "/api/v1/login"


def principal(request: Any) -> Principal | None:
    user = request.headers.get("X-Interim-User")
    if user is None:
        return None
    role = Role(request.headers.get("X-Interim-Role", "viewer"))
    return Principal(subject=user, bindings=(Binding(user, role, None),), scope=None, via="local")


def csrf_token(request: Any) -> str:
    return str(request.cookies.get("conveyor_csrf", ""))


_SOURCES: dict[str, Source] = {}


def source(request: Any) -> Source:
    from conveyor.cli.common import project

    proj = project()
    key = str(proj.config_path)
    if key not in _SOURCES:
        _SOURCES[key] = Source(proj.store(), proj.config())
    return _SOURCES[key]


def approvals(src: Source, who: Principal) -> list[dict[str, Any]]:
    cfg = src.config
    app = cfg.app.name
    facts = FactStore(src.store)
    out: list[dict[str, Any]] = []
    releases = src.store.list_releases(app)[-5:]
    for env in cfg.environments:
        gates = cfg.environment(env).gates
        if not gates.approvals:
            continue
        decided = facts.approvals(app, env)
        live = {i.version for i in src.store.instances(app, env) if i.role == "active"}
        for rel in releases:
            if rel.version in live:
                continue
            mine = [a for a in decided if a.version == rel.version and not a.withdrawn]
            approved = sum(1 for a in mine if a.decision == "approve")
            if approved >= gates.approvals:
                continue
            allowed = decide(who, "approve", env)
            out.append(
                {
                    "version": rel.version,
                    "environment": env,
                    "required": gates.approvals,
                    "approved": approved,
                    "approvals": [
                        {"actor": a.actor, "decision": a.decision, "comment": a.comment}
                        for a in mine
                    ],
                    "since": rel.created_at.isoformat(),
                    "deployer": None,
                    "can_decide": allowed.allowed,
                    "why_not": allowed.reason,
                    "post": f"/api/v1/environments/{env}/approvals",
                    "fields": {"version": rel.version},
                }
            )
    return out


def tokens(src: Source, who: Principal) -> list[dict[str, Any]]:
    from conveyor.store.access import list_tokens

    return [t.to_json() for t in list_tokens(src.store, owner=who.subject)]
