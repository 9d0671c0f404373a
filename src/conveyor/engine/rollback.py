"""Rolling an environment back: to the standby colors at once, or by redeploying."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.core import rollout as r
from conveyor.engine.errors import Refused
from conveyor.engine.outcome import Emit, Outcome
from conveyor.releases import ReleaseStore
from conveyor.routers.base import ProxyUnavailable, RouterError
from conveyor.store.db import InstanceRecord

if TYPE_CHECKING:
    from conveyor.config import ResolvedEnvironment
    from conveyor.engine.engine import Engine


def _record(
    engine: Engine, dep_id: int, emit: Emit, state: str, reason: str, service: str | None = None
) -> None:
    engine.store.add_event(
        dep_id, state, reason, {"service": service} if service else {}, engine.utcnow()
    )
    emit({"step": state, "service": service, "message": reason})


async def rollback(engine: Engine, env_name: str, emit: Emit, reason: str = "") -> Outcome:
    """Roll an environment back; `reason` (automatic rollbacks) goes into the history."""
    env = engine.environment(env_name)
    rows = engine.store.instances(engine.app, env_name)
    live = tuple(
        r.LiveColor(
            row.service,
            env.services[row.service].kind if row.service in env.services else "web",
            row.color,
            row.version,
            "standby" if row.role == "standby" else "active",
            engine.alive(row),
        )
        for row in rows
        if row.role in ("active", "standby")
    )
    current = next((row.version for row in rows if row.role == "active"), None)
    plan = r.plan_rollback(live, _previous_version(engine, env_name, current))
    if plan.mode == "none":
        raise Refused(f"cannot roll back {env_name}: {plan.reason}")
    if reason:
        plan = r.RollbackPlan(plan.mode, plan.version, plan.switch, f"{reason}: {plan.reason}")
    assert plan.version is not None
    if plan.mode == "redeploy":
        emit({"step": "plan", "message": plan.reason})
        outcome = await engine.deploy(
            env_name, plan.version, emit, kind="rollback", reason=plan.reason
        )
        if outcome.exit_code == 0:
            mark_rolled_back(engine, env_name, current, outcome.deployment_id)
        return outcome
    engine.lock(env_name, f"rollback to {plan.version}")
    try:
        return await _switch_back(engine, env, rows, plan, current, emit)
    finally:
        engine.busy.pop(env_name, None)


def _previous_version(engine: Engine, env: str, current: str | None) -> str | None:
    for dep in engine.store.list_deployments(engine.app, env, limit=200):
        if dep.outcome == "succeeded" and dep.version != current:
            return dep.version
    return None


def mark_rolled_back(
    engine: Engine, env: str, version: str | None, by: int | None, why: str = ""
) -> None:
    for dep in engine.store.list_deployments(engine.app, env, limit=200):
        if dep.id == by:
            continue
        if dep.version == version and dep.outcome == "succeeded":
            detail = f"rolled back by deployment #{by}" + (f": {why}" if why else "")
            engine.store.set_outcome(dep.id, "rolled_back", detail)
            return


async def _switch_back(
    engine: Engine,
    env: ResolvedEnvironment,
    rows: list[InstanceRecord],
    plan: r.RollbackPlan,
    current: str | None,
    emit: Emit,
) -> Outcome:
    assert plan.version is not None
    dep_id = engine.store.create_deployment(
        engine.app, env.name, plan.version, "rollback", current, engine.utcnow(), reason=plan.reason
    )
    release = engine.store.get_release(engine.app, plan.version)
    assert release is not None
    _record(engine, dep_id, emit, "rollback", plan.reason)
    by_key = {(row.service, row.color): row for row in rows}
    switch_ms: dict[str, float] = {}
    replaced: list[InstanceRecord] = []
    for service, color in plan.switch:
        standby = by_key[(service, color)]
        assert standby.port is not None
        started = time.perf_counter()
        try:
            await engine.push(engine.route_for(env, service, color, standby.port))
        except (RouterError, ProxyUnavailable, OSError) as exc:
            reason = f"switching {service} back failed: {exc}"
            engine.store.finish_deployment(dep_id, "failed", reason, engine.utcnow())
            return Outcome(1, dep_id, "failed", reason)
        switch_ms[service] = round((time.perf_counter() - started) * 1000, 2)
        engine.store.upsert_instance(
            engine.with_changes(standby, role="active", standby_until=None, deployment_id=dep_id)
        )
        replaced.extend(row for row in rows if row.service == service and row.role == "active")
    _record(engine, dep_id, emit, "switched", f"traffic is back on {plan.version}")
    # Workers have no standby: start the rolled-back version beside the current one, then swap.
    tree: Path | None = None
    for row in rows:
        svc = env.services.get(row.service)
        if (
            svc is None
            or svc.kind != "worker"
            or row.role != "active"
            or row.version == plan.version
        ):
            continue
        tree = tree or ReleaseStore(engine.paths.home, engine.store, engine.app).tree(release)
        color = r.other_color(row.color)
        inst = engine.spawn(env, row.service, color, plan.version, tree)
        engine.store.upsert_instance(
            engine.row(env.name, row.service, color, release, inst, "active", dep_id)
        )
        replaced.append(row)
        _record(
            engine,
            dep_id,
            emit,
            "started",
            f"{row.service} {plan.version} ({color}) started",
            row.service,
        )
    left = await engine.drain(env, tuple((row.service, row.color) for row in replaced if row.port))
    suffix = f"; {left} still in flight after the drain timeout" if left else ""
    _record(engine, dep_id, emit, "drained", f"in-flight requests finished{suffix}")
    for row in replaced:
        svc = env.services.get(row.service)
        await engine.stop_row(row, svc.stop_timeout if svc else 10.0)
        _record(
            engine,
            dep_id,
            emit,
            "stopped",
            f"stopped {row.service} {row.version} ({row.color})",
            row.service,
        )
    reason = f"rolled back to {plan.version}"
    if plan.reason.startswith("automatic rollback"):
        reason = f"{plan.reason.split(': switching back')[0]}; {reason}"
    engine.store.finish_deployment(dep_id, "succeeded", reason, engine.utcnow())
    mark_rolled_back(engine, env.name, current, dep_id, plan.reason)
    return Outcome(
        0,
        dep_id,
        "succeeded",
        reason,
        {
            "environment": env.name,
            "version": plan.version,
            "previous_version": current,
            "switch_ms": switch_ms,
        },
    )
