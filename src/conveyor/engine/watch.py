"""Analysis through the standby window: a release keeps being measured while its predecessor waits.

The bake is a fixed length. A blue/green release that nobody used during it goes live "unverified",
so the same checks go on measuring it for as long as the previous version is on standby; a check
that fails `failure_limit` measurements in a row (the rollout's own tally, core/rollout.tally) asks
for the switch back, which the supervisor performs on its next pass and the history records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from conveyor.config import ResolvedEnvironment
from conveyor.core import rollout as r
from conveyor.core.analysis import Measurement, Verdict
from conveyor.engine.analysis import AnalysisRunner, add_checks, check_name
from conveyor.engine.context import Context
from conveyor.metrics.base import Target
from conveyor.routers.base import route_name
from conveyor.store.db import InstanceRecord

log = logging.getLogger("conveyor.supervisor")


@dataclass
class _Watch:
    key: tuple[int | None, ...]  # the deployments of the active colors: a new one restarts it
    runner: AnalysisRunner
    checks: dict[str, r.CheckState] = field(default_factory=dict)
    verdict: str | None = None  # why to switch back, once a check failed enough


class StandbyWatch:
    """One analysis runner per environment whose previous version is on standby."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._watches: dict[str, _Watch] = {}

    async def keep(self, env: ResolvedEnvironment, active: list[InstanceRecord]) -> str | None:
        """Measure `env`'s active web colors; the reason to switch back, when there is one."""
        key = tuple(sorted(row.deployment_id or 0 for row in active))
        watch = self._watches.get(env.name)
        if watch is not None and watch.key != key:
            await self.drop(env.name)
            watch = None
        if watch is None:
            watch = self._start(env, active, key)
            if watch is None:
                return None
        return watch.verdict

    def _start(
        self, env: ResolvedEnvironment, active: list[InstanceRecord], key: tuple[int | None, ...]
    ) -> _Watch | None:
        targets = []
        for row in active:
            endpoint = self.ctx.fleet.endpoint(row)
            if endpoint is None:
                continue
            release = self.ctx.store.get_release(row.app, row.version)
            cwd = self.ctx.tree(release) if release is not None else self.ctx.paths.home
            targets.append(
                Target(
                    app=env.app,
                    environment=env.name,
                    service=row.service,
                    color=row.color,
                    version=row.version,
                    port=endpoint.port,
                    cwd=cwd,
                    route=route_name(env.name, row.service),
                )
            )
        if not targets:
            return None
        checks = {
            check_name(env, t.service, c): r.CheckState(
                r.CheckPlan(check_name(env, t.service, c), c.failure_limit)
            )
            for t in targets
            for c in env.rollout.checks()
        }
        deployment = active[0].deployment_id

        def measured(name: str, m: Measurement) -> None:
            verdict = m.verdict.value if isinstance(m.verdict, Verdict) else str(m.verdict)
            summary = f"{name}: {m.detail}" if m.detail else name
            state = watch.checks.get(name)
            if state is None or watch.verdict is not None:
                return
            state = r.tally(state, r.Measured(name, verdict, summary, m.at))  # type: ignore[arg-type]
            watch.checks[name] = state
            if verdict == "fail" and deployment is not None:
                self.ctx.journal.record(
                    deployment,
                    "measurement",
                    f"{summary} (standby window)",
                    {"measurement": m.to_json()},
                )
            if state.failures >= state.plan.failure_limit:
                watch.verdict = (
                    f"analysis failed during the standby window: {state.last} "
                    f"({state.failures} failed measurements in a row)"
                )

        runner = AnalysisRunner(
            self.ctx.traffic.router, self.ctx.clock.now, measured, self.ctx.secrets.redactor
        )
        add_checks(runner, env, targets)
        watch = _Watch(key, runner, checks)
        self._watches[env.name] = watch
        runner.start()
        log.info("%s: measuring %s through the standby window", env.name, ", ".join(checks))
        return watch

    async def drop(self, env_name: str) -> None:
        watch = self._watches.pop(env_name, None)
        if watch is not None:
            await watch.runner.stop()

    async def drop_all_but(self, keep: set[str]) -> None:
        for name in [n for n in self._watches if n not in keep]:
            await self.drop(name)

    def watching(self) -> set[str]:
        return set(self._watches)
