"""Rolling an environment back to its standby colors, at once.

`plan` asks the pure core what a rollback can do with what runs; when the previous version is
still on standby, `switch_back` moves the traffic to it. When it is not, the rollback is a
redeploy of the previous release, which the engine runs as any deployment (this module never
starts one: it only switches).
"""

from __future__ import annotations

import time
from pathlib import Path

from conveyor.config import ResolvedEnvironment
from conveyor.core import rollout as r
from conveyor.engine.context import Context
from conveyor.engine.outcome import Emit, Outcome
from conveyor.engine.secrets import EVENT, Pin, names_of, pins_of
from conveyor.engine.traffic import ROUTER_ERRORS
from conveyor.store.db import InstanceRecord


async def plan(ctx: Context, env: ResolvedEnvironment, reason: str = "") -> r.RollbackPlan:
    """What a rollback of `env` would do now; `reason` (automatic rollbacks) leads the plan's."""
    rows = ctx.store.instances(env.app, env.name)
    live = tuple(
        [
            r.LiveColor(
                row.service,
                env.services[row.service].kind if row.service in env.services else "web",
                row.color,
                row.version,
                "standby" if row.role == "standby" else "active",
                await ctx.fleet.alive(row),
            )
            for row in rows
            if row.role in ("active", "standby")
        ]
    )
    current = current_version(rows)
    found = r.plan_rollback(live, _previous_version(ctx, env, current))
    if reason and found.mode != "none":
        found = r.RollbackPlan(found.mode, found.version, found.switch, f"{reason}: {found.reason}")
    return found


def current_version(rows: list[InstanceRecord]) -> str | None:
    return next((row.version for row in rows if row.role == "active"), None)


def _previous_version(ctx: Context, env: ResolvedEnvironment, current: str | None) -> str | None:
    for dep in ctx.store.list_deployments(env.app, env.name, limit=200):
        if dep.outcome == "succeeded" and dep.kind != "stop" and dep.version != current:
            return dep.version
    return None


def last_live(ctx: Context, env: ResolvedEnvironment, version: str) -> int | None:
    """The deployment that last made `version` live in `env` (its secret versions are the ones
    a rollback to it restores)."""
    for dep in ctx.store.list_deployments(env.app, env.name, limit=200):
        live = dep.outcome in ("succeeded", "rolled_back")
        if dep.version == version and live and dep.kind in ("deploy", "rollback", "start"):
            return dep.id
    return None


def _shown(pinned: dict[str, Pin]) -> str:
    return ", ".join(f"{n} ({p[0]} {p[1]})" for n, p in sorted(pinned.items()))


async def switch_back(
    ctx: Context,
    env: ResolvedEnvironment,
    found: r.RollbackPlan,
    emit: Emit,
    died_at: float | None = None,
) -> Outcome:
    """Traffic back on the standby colors, workers restarted on that version, the rest stopped.

    `died_at`: when the crash that this rollback answers happened (epoch seconds, as the runtime
    saw it); the time from it to the switch is recorded.
    """
    assert found.version is not None
    rows = ctx.store.instances(env.app, env.name)
    current = current_version(rows)
    journal, fleet, traffic = ctx.journal, ctx.fleet, ctx.traffic
    release = ctx.store.get_release(env.app, found.version)
    assert release is not None
    by_key = {(row.service, row.color): row for row in rows}
    switch_ms: dict[str, float] = {}
    switched: list[InstanceRecord] = []
    failure = ""
    # Traffic first, the records after: users wait on the switch, not on the database.
    for service, color in found.switch:
        standby = by_key[(service, color)]
        endpoint = fleet.endpoint(standby)
        assert endpoint is not None
        started = time.perf_counter()
        try:
            await traffic.push(traffic.single(env, service, color, endpoint))
        except ROUTER_ERRORS as exc:
            failure = f"switching {service} back failed: {exc}"
            break
        switch_ms[service] = round((time.perf_counter() - started) * 1000, 2)
        switched.append(standby)
    switched_at = ctx.clock.utcnow().timestamp()
    dep_id = journal.open(env.app, env.name, found.version, "rollback", current, found.reason)
    journal.record(dep_id, "rollback", found.reason, emit=emit)
    # The standby colors run with the secret versions of the deployment that started them:
    # this rollback records those (restarts go by them), and its workers get them too.
    pinned = pins_of(ctx.store, next((s.deployment_id for s in switched), None))
    if pinned:
        data = {n: {"provider": p[0], "version": p[1]} for n, p in pinned.items()}
        journal.record(dep_id, EVENT, f"secrets: {_shown(pinned)}", {"secrets": data})
    if failure:
        journal.finish(dep_id, "failed", failure)
        return Outcome(1, dep_id, "failed", failure)
    replaced: list[InstanceRecord] = []
    for standby in switched:
        fleet.update(standby, role="active", standby_until=None, deployment_id=dep_id)
        replaced.extend(
            row for row in rows if row.service == standby.service and row.role == "active"
        )
    death_ms = None
    if died_at is not None:
        death_ms = round((switched_at - died_at) * 1000, 1)
    journal.record(
        dep_id,
        "switched",
        f"traffic is back on {found.version}"
        + (f", {death_ms:.0f} ms after the crash" if death_ms is not None else ""),
        data={"death_to_switch_ms": death_ms} if death_ms is not None else None,
        emit=emit,
    )
    # Workers have no standby: start the rolled-back version beside the current one, then swap.
    tree: Path | None = None
    for row in rows:
        svc = env.services.get(row.service)
        if (
            svc is None
            or svc.kind != "worker"
            or row.role != "active"
            or row.version == found.version
        ):
            continue
        tree = tree or ctx.tree(release)
        color = r.other_color(row.color)
        values = await ctx.secrets.resolve(env, names_of(svc), pinned, "rollback")
        handle = await fleet.spawn(
            env, row.service, color, found.version, tree, secrets=values, deployment_id=dep_id
        )
        fleet.record(env.name, row.service, color, release, handle, "active", dep_id)
        replaced.append(row)
        journal.record(
            dep_id,
            "started",
            f"{row.service} {found.version} ({color}) started",
            emit=emit,
            service=row.service,
        )
    routed = tuple((row.service, row.color) for row in replaced if fleet.endpoint(row))
    left = await traffic.drain(env, routed)
    suffix = f"; {left} still in flight after the drain timeout" if left else ""
    journal.record(dep_id, "drained", f"in-flight requests finished{suffix}", emit=emit)
    for row in replaced:
        svc = env.services.get(row.service)
        await fleet.stop(row, svc.stop_timeout if svc else 10.0)
        journal.record(
            dep_id,
            "stopped",
            f"stopped {row.service} {row.version} ({row.color})",
            emit=emit,
            service=row.service,
        )
    reason = f"rolled back to {found.version}"
    if death_ms is not None:
        reason = f"switched back to {found.version} in {death_ms:.0f} ms"
    if found.reason.startswith("automatic rollback"):
        reason = f"{found.reason.split(': switching back')[0]}; {reason}"
    journal.finish(dep_id, "succeeded", reason)
    journal.mark_rolled_back(env.app, env.name, current, dep_id, found.reason)
    return Outcome(
        0,
        dep_id,
        "succeeded",
        reason,
        {
            "environment": env.name,
            "version": found.version,
            "previous_version": current,
            "switch_ms": switch_ms,
            "death_to_switch_ms": death_ms,
        },
    )
