"""What `status` and `history` show about an environment and its deployments.

Shared by the agent (status, live) and the CLI (history, read from the database directly), so the
two never disagree on what a deployment's final measurements, strategy or trigger were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.routers.base import route_name
from conveyor.store.db import DeploymentRecord, EventRecord, InstanceRecord, Store

if TYPE_CHECKING:  # the CLI imports this module for history: keep it light
    from conveyor.config import ResolvedEnvironment
    from conveyor.engine.fleet import Fleet
    from conveyor.engine.traffic import Traffic


def measurements(events: list[EventRecord]) -> list[dict[str, Any]]:
    """The deployment's latest measurements (recorded when it finished)."""
    latest = [e for e in events if e.state == "analysis"]
    return list(latest[-1].data.get("measurements", [])) if latest else []


def strategy(events: list[EventRecord]) -> str | None:
    plan = next((e for e in events if e.state == "plan"), None)
    return plan.data.get("strategy") if plan else None


def trigger(events: list[EventRecord]) -> dict[str, Any] | None:
    """The failed measurement that made the rollout roll back, if one did."""
    failed = [e for e in events if e.state == "measurement"]
    return failed[-1].data.get("measurement") if failed else None


def last_finished(store: Store, app: str, env: str) -> dict[str, Any] | None:
    """The latest finished deployment, with its final measurements: what status shows once
    nothing is in progress."""
    for d in store.list_deployments(app, env, limit=10):
        if d.outcome == "in_progress" or d.kind == "crash_loop":  # status shows restarts itself
            continue
        return {
            "id": d.id,
            "version": d.version,
            "outcome": d.outcome,
            "reason": d.reason,
            "finished_at": d.finished_at.isoformat() if d.finished_at else None,
            "measurements": measurements(store.events(d.id)),
        }
    return None


def history_row(store: Store, d: DeploymentRecord, detail: bool) -> dict[str, Any]:
    """One line of `history`; with detail, what its events say too (for --json)."""
    row: dict[str, Any] = {
        "id": d.id,
        "version": d.version,
        "kind": d.kind,
        "outcome": d.outcome,
        "started_at": d.started_at.isoformat(),
        "finished_at": d.finished_at.isoformat() if d.finished_at else None,
        "reason": d.reason,
        "previous_version": d.previous_version,
    }
    if detail:
        events = store.events(d.id)
        row["measurements"] = measurements(events)
        row["strategy"] = strategy(events)
        row["trigger"] = trigger(events) if d.outcome == "rolled_back" else None
        # Which version of each secret it ran with (names, providers, versions; never values).
        row["secrets"] = next(
            (dict(e.data.get("secrets", {})) for e in reversed(events) if e.state == "secrets"),
            {},
        )
        row["events"] = [
            {"at": e.at.isoformat(), "state": e.state, "reason": e.reason, **e.data} for e in events
        ]
    return row


async def services(
    fleet: Fleet, traffic: Traffic, env: ResolvedEnvironment, rows: list[InstanceRecord]
) -> list[dict[str, Any]]:
    """Each service of `env`: its active and standby colors, health, and public URL.

    The URL is the one the router serves now; when conveyor.toml says otherwise (edited since
    the last deploy), `configured_url` says what the next deploy will use.
    """
    out = []
    for name, svc in env.services.items():
        active = next((x for x in rows if x.service == name and x.role == "active"), None)
        standby = next((x for x in rows if x.service == name and x.role == "standby"), None)
        configured = f"http://{svc.listen}:{svc.port}" if svc.kind == "web" else None
        live = traffic.current(route_name(env.name, name)) if svc.kind == "web" else None
        entry: dict[str, Any] = {
            "name": name,
            "kind": svc.kind,
            "active": None,
            "standby": None,
            "url": f"http://{live.host}:{live.port}" if live is not None else configured,
        }
        if live is not None:
            # The traffic split the router applies now (the API shows it beside the desired one).
            entry["weights"] = {b.color: b.weight for b in live.backends}
        if live is not None and entry["url"] != configured:
            entry["configured_url"] = configured
        if active is not None:
            handle = fleet.handle(active)
            endpoint = handle.endpoint if handle is not None else None
            entry["active"] = {
                "version": active.version,
                "color": active.color,
                "healthy": await fleet.healthy(svc, active),
                "pid": handle.ref.get("pid") if handle is not None else None,
                "port": endpoint.port if endpoint is not None else None,
                "since": active.started_at.isoformat(),
            }
        if standby is not None:
            endpoint = fleet.endpoint(standby)
            entry["standby"] = {
                "version": standby.version,
                "color": standby.color,
                "until": standby.standby_until.isoformat() if standby.standby_until else None,
                "running": await fleet.alive(standby),
                "port": endpoint.port if endpoint is not None else None,
            }
        out.append(entry)
    return out


def config_notes(services: list[dict[str, Any]]) -> list[str]:
    """What the configuration says differently from what runs, in words."""
    return [
        f"{s['name']}: conveyor.toml now says {s['configured_url']}, but {s['url']} is live; "
        "the next deploy applies it"
        for s in services
        if s.get("configured_url")
    ]
