"""Read models of the API and the dashboard: plain functions from the state store (and the
configuration) to JSON-ready dicts. The JSON endpoints return them as they are; the dashboard's
pages render them. Every query is indexed and bounded: nothing here reads all deployments.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import literal, select, union_all
from sqlalchemy.orm import Session

from conveyor.config import Config
from conveyor.engine.status import history_row, measurements
from conveyor.store import audit as audit_log
from conveyor.store import locks as stored_locks
from conveyor.store import requests as waiting_requests
from conveyor.store.db import DeploymentRecord, EventRecord, Store, _marked
from conveyor.store.facts import ApprovalRecord, FactStore
from conveyor.store.models import AuditRow, DeploymentRow, EventRow, InstanceRow

# How the events of a deployment are grouped on the stream and in the step timeline.
TRAFFIC = frozenset({"switching", "switched", "switched_back", "step", "drained", "standby"})
ANALYSIS = frozenset({"analysis", "measurement", "inconclusive", "baking"})
DEPLOYMENT = frozenset(
    {"plan", "succeeded", "failed", "rolled_back", "aborted", "rollback", "crash_loop"}
)
# The last event of a deployment in progress that means it waits for someone.
PAUSED = frozenset({"paused", "waiting"})
DEGRADED = frozenset({"crash_loop", "unrouted", "contract_failed"})
MAX_LIMIT = 500


def event_type(state: str) -> str:
    """The Server-Sent Events type of a deployment event: deployment, step, traffic, analysis."""
    if state in TRAFFIC:
        return "traffic"
    if state in ANALYSIS:
        return "analysis"
    if state in DEPLOYMENT:
        return "deployment"
    return "step"


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def deployment_json(d: DeploymentRecord) -> dict[str, Any]:
    return {
        "id": d.id,
        "environment": d.environment,
        "version": d.version,
        "kind": d.kind,
        "outcome": d.outcome,
        "started_at": d.started_at.isoformat(),
        "finished_at": _iso(d.finished_at),
        "reason": d.reason,
        "previous_version": d.previous_version,
    }


def approval_json(a: ApprovalRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "version": a.version,
        "environment": a.environment,
        "decision": a.decision,
        "actor": a.actor,
        "comment": a.comment,
        "at": a.at.isoformat(),
        "withdrawn_at": _iso(a.withdrawn_at),
        "withdrawn_by": a.withdrawn_by,
    }


# --- the overview -------------------------------------------------------------------------------


def dashboard(store: Store, cfg: Config) -> dict[str, Any]:
    """Environments by services: the live release, its state, since when, and what needs
    attention (waiting for approval, paused, degraded, rolled back). A handful of indexed
    queries per environment, whatever the length of the history."""
    app = cfg.app.name
    names = sorted(cfg.environments)
    # One read transaction for the whole overview: on PostgreSQL each one costs round trips.
    with store.reading() as session:
        live = _active(session, app)
        waiting = waiting_requests.waiting_in(session, app)
        latest = _latest(session, app, names)
    rows: list[dict[str, Any]] = []
    environments: list[dict[str, Any]] = []
    for env_name in names:
        last, last_state = latest[env_name]
        flags = {
            "waiting_for_approval": any(r.environment == env_name for r in waiting),
            "paused": last is not None and last.outcome == "in_progress" and last_state in PAUSED,
            "degraded": last is not None
            and (last.kind == "crash_loop" or last_state in DEGRADED)
            and last.outcome in ("in_progress", "failed"),
            "rolled_back": last is not None and last.outcome == "rolled_back",
        }
        environments.append(
            {
                "name": env_name,
                "latest_deployment": deployment_json(last) if last else None,
                "attention": flags,
                "needs_attention": any(flags.values()),
            }
        )
        env_cfg = cfg.environment(env_name)
        for service in env_cfg.services:
            active = live.get((env_name, service))
            if last is not None and last.outcome == "in_progress":
                state = "deploying"
            elif active is not None:
                state = "live"
            elif last is not None and last.kind == "stop":
                state = "stopped"
            else:
                state = "not deployed"
            rows.append(
                {
                    "environment": env_name,
                    "service": service,
                    "release": active[0] if active else None,
                    "state": state,
                    "since": _iso(active[1]) if active else None,
                    "deployment_id": active[2] if active else None,
                    "attention": flags,
                    "needs_attention": any(flags.values()),
                }
            )
    return {
        "app": app,
        "environments": environments,
        "services": rows,
        "waiting": [r.to_json() for r in waiting],
    }


def _active(session: Session, app: str) -> dict[tuple[str, str], tuple[str, datetime, int | None]]:
    """(environment, service) -> (version, since, deployment) of every active color: only the
    columns the overview shows (a few hundred rows; ORM objects would cost more than the query)."""
    query = select(
        InstanceRow.environment,
        InstanceRow.service,
        InstanceRow.version,
        InstanceRow.started_at,
        InstanceRow.deployment_id,
    ).where(InstanceRow.app == app, InstanceRow.role == "active")
    return {(e, s): (v, at, d) for e, s, v, at, d in session.execute(query)}


def _latest(
    session: Session, app: str, names: list[str]
) -> dict[str, tuple[DeploymentRecord | None, str | None]]:
    """Each environment's newest deployment (shown rolled back if it was) and the state of its
    newest event: three queries whatever the number of environments, each an indexed lookup per
    environment (the newest id of each, then those rows and their newest events)."""
    found: dict[str, tuple[DeploymentRecord | None, str | None]] = {n: (None, None) for n in names}
    if not names:
        return found
    # One row: the newest id of each environment, each by a backward scan of the (app,
    # environment, id) index that stops at its first entry (ORDER BY id DESC LIMIT 1; a max()
    # is planned as a read of the whole range when the statistics are old).
    newest = select(
        *(
            select(DeploymentRow.id)
            .where(DeploymentRow.app == app, DeploymentRow.environment == name)
            .order_by(DeploymentRow.id.desc())
            .limit(1)
            .scalar_subquery()
            for name in names
        )
    )
    ids = [i for i in session.execute(newest).one() if i is not None]
    rows = list(session.scalars(select(DeploymentRow).where(DeploymentRow.id.in_(ids))))
    if not rows:
        return found
    # Each deployment's newest event by the (deployment_id, id) index, whatever the planner's
    # statistics say (a GROUP BY over the events may become a scan of all of them).
    newest_event = union_all(
        *(
            select(
                literal(r.id).label("d"),
                select(EventRow.state)
                .where(EventRow.deployment_id == r.id)
                .order_by(EventRow.id.desc())
                .limit(1)
                .scalar_subquery()
                .label("s"),
            )
            for r in rows
        )
    )
    states = {dep: state for dep, state in session.execute(newest_event)}
    for rec in _marked(session, rows):
        found[rec.environment] = (rec, states.get(rec.id))
    return found


# --- environments ---------------------------------------------------------------------------------


def _lock(store: Store, app: str, env: str) -> dict[str, Any] | None:
    with store.reading() as session:
        lock = stored_locks.get(session, app, env)
    return lock.to_json() if lock is not None else None


def environments(store: Store, cfg: Config) -> list[dict[str, Any]]:
    app = cfg.app.name
    instances = store.instances(app)
    out = []
    for name in sorted(cfg.environments):
        live = sorted(
            {i.version for i in instances if i.environment == name and i.role == "active"}
        )
        latest = store.list_deployments(app, name, limit=1)
        out.append(
            {
                "name": name,
                "live": live,
                "lock": _lock(store, app, name),
                "latest_deployment": deployment_json(latest[0]) if latest else None,
                "gates": cfg.environment(name).gates.model_dump(),
            }
        )
    return out


def environment(store: Store, cfg: Config, name: str) -> dict[str, Any]:
    """One environment: its gates, its lock, what runs (from the store), recent history."""
    app = cfg.app.name
    env = cfg.environment(name)
    services = []
    rows = store.instances(app, name)
    for service in env.services:
        colors = [r for r in rows if r.service == service]
        services.append(
            {
                "name": service,
                "kind": env.services[service].kind,
                "instances": [
                    {
                        "color": r.color,
                        "version": r.version,
                        "role": r.role,
                        "since": r.started_at.isoformat(),
                        "standby_until": _iso(r.standby_until),
                        "deployment_id": r.deployment_id,
                    }
                    for r in colors
                ],
            }
        )
    return {
        "name": name,
        "gates": env.gates.model_dump(),
        "strategy": env.rollout.strategy,
        "lock": _lock(store, app, name),
        "services": services,
        "history": [deployment_json(d) for d in store.list_deployments(app, name, limit=20)],
        "waiting": [r.to_json() for r in waiting_requests.waiting(store, app, name)],
    }


# --- releases -------------------------------------------------------------------------------------


def releases(store: Store, cfg: Config) -> list[dict[str, Any]]:
    app = cfg.app.name
    live: dict[str, set[str]] = {}
    for i in store.instances(app):
        if i.role == "active":
            live.setdefault(i.version, set()).add(i.environment)
    return [
        {
            "version": r.version,
            "commit": r.commit,
            "digest": r.digest,
            "size": r.size,
            "created_at": r.created_at.isoformat(),
            "live_in": sorted(live.get(r.version, ())),
        }
        for r in store.list_releases(app)
    ]


def release(store: Store, cfg: Config, version: str) -> dict[str, Any] | None:
    app = cfg.app.name
    rec = store.get_release(app, version)
    if rec is None:
        return None
    facts = FactStore(store)
    live = sorted(
        {i.environment for i in store.instances(app) if i.role == "active" and i.version == version}
    )
    return {
        "version": rec.version,
        "commit": rec.commit,
        "digest": rec.digest,
        "size": rec.size,
        "created_at": rec.created_at.isoformat(),
        "live_in": live,
        "tags": list(facts.tags(app, version)),
        "checks": [
            {
                "name": c.name,
                "passed": c.passed,
                "url": c.url,
                "actor": c.actor,
                "at": c.at.isoformat(),
            }
            for c in facts.checks(app, version)
        ],
        "approvals": [
            approval_json(a)
            for env in sorted(cfg.environments)
            for a in facts.approvals(app, env)
            if a.version == version
        ],
    }


# --- deployments ----------------------------------------------------------------------------------


def deployments_page(
    store: Store, app: str, env: str, cursor: int | None, limit: int
) -> dict[str, Any]:
    """Newest first, `limit` at a time; `next_cursor` continues below the last id (keyset)."""
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(DeploymentRow).where(DeploymentRow.app == app, DeploymentRow.environment == env)
    if cursor is not None:
        query = query.where(DeploymentRow.id < cursor)
    with store.reading() as session:
        rows = list(session.scalars(query.order_by(DeploymentRow.id.desc()).limit(limit + 1)))
        records = _marked(session, rows[:limit])
    more = len(rows) > limit
    return {
        "deployments": [deployment_json(d) for d in records],
        "next_cursor": str(records[-1].id) if more and records else None,
    }


def _steps(events: list[EventRecord]) -> list[dict[str, Any]]:
    return [
        {
            "at": e.at.isoformat(),
            "state": e.state,
            "type": event_type(e.state),
            "reason": e.reason,
            "service": e.data.get("service"),
        }
        for e in events
    ]


def _thresholds(cfg: Config, env: str) -> list[dict[str, Any]]:
    """The analysis checks of `env` with their thresholds (from conveyor.toml, as it is now)."""
    try:
        rollout = cfg.environment(env).rollout
    except Exception:  # an environment removed from the file since: no thresholds to show
        return []
    return [
        {
            "check": c.display(),
            "metric": c.metric,
            "max": c.max,
            "min": c.min,
            "interval": c.interval,
            "failure_limit": c.failure_limit,
        }
        for c in rollout.checks()
    ]


def deployment(
    store: Store, cfg: Config, deployment_id: int, live: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """One deployment: its record, step timeline, traffic (desired vs actual while it runs),
    analysis (measurements with values, and the thresholds), approvals of its release there,
    and its events. `live` is the agent's status of the environment, for one in progress."""
    d = store.get_deployment(deployment_id)
    if d is None or d.app != cfg.app.name:
        return None
    events = store.events(d.id)
    row = history_row(store, d, detail=False)
    current = (live or {}).get("deployment") or {}
    running = d.outcome == "in_progress" and current.get("id") == d.id
    measured = current.get("measurements") if running else None
    if measured is None:
        measured = measurements(events) or [
            e.data["measurement"] for e in events if e.state == "measurement"
        ]
    traffic = {
        "desired": current.get("weight") if running else None,
        "step": current.get("step") if running else None,
        "steps": current.get("steps") if running else None,
        "phase": current.get("phase") if running else None,
        "waiting": current.get("waiting") if running else None,
        "actual": {
            s["name"]: s.get("weights")
            for s in (live or {}).get("services", [])
            if s.get("weights")
        },
    }
    approvals = [
        approval_json(a)
        for a in FactStore(store).approvals(d.app, d.environment)
        if a.version == d.version
    ]
    return {
        **row,
        "environment": d.environment,
        "steps": _steps(events),
        "traffic": traffic,
        "analysis": {"measurements": measured, "checks": _thresholds(cfg, d.environment)},
        "approvals": approvals,
        "events": [
            {"at": e.at.isoformat(), "state": e.state, "reason": e.reason, "data": e.data}
            for e in events
        ],
    }


# --- approvals inbox --------------------------------------------------------------------------------


def approvals_inbox(store: Store, cfg: Config) -> list[dict[str, Any]]:
    """Every deploy waiting for approval, across environments, with the gate's state now."""
    from conveyor.promotion import evaluate

    out = []
    now = datetime.now(UTC)
    for req in waiting_requests.waiting(store, cfg.app.name):
        rec = store.get_release(cfg.app.name, req.version)
        item = req.to_json()
        if rec is not None and req.environment in cfg.environments:
            decision = evaluate(cfg, store, rec, req.environment, req.requested_by, now)
            item["gates"] = decision.to_json()["gates"]
        out.append(item)
    return out


# --- audit ------------------------------------------------------------------------------------------


def audit_page(
    store: Store,
    *,
    actor: str | None = None,
    environment: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    cursor: int | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Newest first, keyset on the entry id; `next_cursor` continues below the last one."""
    limit = max(1, min(limit, MAX_LIMIT))
    query = _audit_query(actor, environment, action, since)
    if cursor is not None:
        query = query.where(AuditRow.id < cursor)
    with store.reading() as session:
        rows = list(session.scalars(query.order_by(AuditRow.id.desc()).limit(limit + 1)))
        entries = [audit_log.to_record(r).to_json() for r in rows[:limit]]
    more = len(rows) > limit
    return {"entries": entries, "next_cursor": str(entries[-1]["id"]) if more else None}


def _audit_query(
    actor: str | None, environment: str | None, action: str | None, since: datetime | None
) -> Any:
    return audit_log.matching(environment=environment, since=since, actor=actor, action=action)


def audit_batches(
    store: Store,
    *,
    actor: str | None = None,
    environment: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    batch: int = 500,
) -> Any:
    """Every matching entry, oldest first, in batches (for the streamed export)."""
    after = 0
    while True:
        query = _audit_query(actor, environment, action, since).where(AuditRow.id > after)
        with store.reading() as session:
            rows = list(session.scalars(query.order_by(AuditRow.id.asc()).limit(batch)))
            entries = [audit_log.to_record(r).to_json() for r in rows]
        if not entries:
            return
        yield entries
        after = int(entries[-1]["id"])
