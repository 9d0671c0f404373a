"""One deployment in progress: drives the pure rollout machine through the fleet and traffic.

The core decides, this module acts: every action the machine returns is performed here and its
result comes back as an event. Every transition is appended to the journal, so `history` can tell
why a deployment ended the way it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from conveyor.aio import cancel_and_wait
from conveyor.config import ResolvedEnvironment, ServiceConfig
from conveyor.core import rollout as r
from conveyor.core.analysis import Measurement, Verdict
from conveyor.core.durations import format_duration
from conveyor.engine.analysis import AnalysisRunner, add_checks, check_name
from conveyor.engine.context import Context, wall_time
from conveyor.engine.fleet import handle_id
from conveyor.engine.hooks import HookResult, run_hook
from conveyor.engine.migrate import ERRORS as MIGRATION_ERRORS
from conveyor.engine.migrate import Migrator
from conveyor.engine.notify import Notice, Notifier
from conveyor.engine.outcome import Emit
from conveyor.engine.traffic import ROUTER_ERRORS
from conveyor.environ import conveyor_bin
from conveyor.metrics.base import Target
from conveyor.ports import free_port
from conveyor.routers.base import Backend, Split, route_name
from conveyor.runtimes.base import Endpoint, Handle, RuntimeStartError
from conveyor.secrets.base import SecretError, SecretValue
from conveyor.store.db import InstanceRecord, ReleaseRecord

log = logging.getLogger("conveyor.engine")

# How often a rollout wakes up without events, to check its timers (start timeout, pause, bake).
TICK = 0.05
LOG_TAIL_LINES = 8


@dataclass
class Deployment:
    ctx: Context
    id: int
    env: ResolvedEnvironment
    release: ReleaseRecord
    tree: Path
    emit: Emit
    old: dict[str, InstanceRecord]
    previous_version: str | None
    # The secrets resolved for this release (every service's, hooks get them all).
    secrets: dict[str, SecretValue] = field(default_factory=dict)
    # Said with the outcome: "only the secrets changed: DB_URL local:3 -> local:4".
    note: str = ""
    # The app database's expand migrations, before anything starts ([migrations]).
    migrator: Migrator | None = None
    queue: asyncio.Queue[r.Event] = field(default_factory=asyncio.Queue)
    new: dict[str, Handle] = field(default_factory=dict)
    state: r.Rollout | None = None
    probers: list[asyncio.Task[None]] = field(default_factory=list)
    switch_ms: dict[str, float] = field(default_factory=dict)
    failed_logs: dict[str, list[str]] = field(default_factory=dict)
    measurements: dict[str, Measurement] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)  # the latest verdict shown, per check
    previews: dict[str, str] = field(default_factory=dict)
    analysis: AnalysisRunner | None = None
    notifier: Notifier | None = None
    smoke_task: asyncio.Task[None] | None = None
    hook_tasks: list[asyncio.Task[None]] = field(default_factory=list)  # informational hooks
    watched: set[str] = field(default_factory=set)  # new colors whose exit the runtime tells
    deaths: dict[str, float] = field(default_factory=dict)  # when a new color died (epoch s)
    death_to_switch: dict[str, float] = field(default_factory=dict)  # ms, per service

    @property
    def log_path(self) -> Path:
        return self.ctx.deployment_log(self.env.name, self.id)

    # --- the loop -------------------------------------------------------------------------------

    async def run(self, plans: tuple[r.ServicePlan, ...]) -> r.Rollout:
        self.notifier = Notifier(
            list(self.env.notifications), self.ctx.secrets.redactor, self._webhook_url
        )
        try:
            if self.env.hooks.pre_deploy is not None:
                result = await self._hook("pre_deploy")
                if not result.ok:
                    return self._refused(f"pre_deploy hook failed: {result.detail}")
            if self.migrator is not None and self.migrator.configured:
                failure = await self._migrate()
                if failure is not None:
                    return self._refused(failure)
            options = self._options(plans)
            self._record_plan(options)
            state, actions = r.begin(plans, self.ctx.clock.now(), options)
            self.state = state
            await self._perform(actions)
            next_tick = self.ctx.clock.now() + TICK
            while not self.state.terminal:
                try:
                    event: r.Event = await asyncio.wait_for(self.queue.get(), timeout=TICK)
                except TimeoutError:
                    event = r.Tick(self.ctx.clock.now())
                self.state, actions = r.step(self.state, event)
                await self._perform(actions)
                # Timers (start timeout, pause, bake) advance on ticks: a steady stream of events
                # (health checks faster than TICK) must not starve them.
                now = self.ctx.clock.now()
                if isinstance(event, r.Tick):
                    next_tick = now + TICK
                elif now >= next_tick and not self.state.terminal:
                    next_tick = now + TICK
                    self.state, actions = r.step(self.state, r.Tick(now))
                    await self._perform(actions)
            return self.state
        except Exception as exc:
            # A bug or an unexpected failure must not leave the deployment `in_progress` forever
            # or a half-started color running: record it and stop what never took traffic.
            log.exception("deployment #%d failed unexpectedly", self.id)
            return await self._crashed(exc)
        finally:
            await self._cleanup()

    async def _migrate(self) -> str | None:
        """Pending expand migrations; the reason the deployment fails, if they do."""
        assert self.migrator is not None
        started = time.monotonic()
        try:
            await self.migrator.expand(self.tree)
        except MIGRATION_ERRORS as exc:
            return f"migrations failed, nothing was started or switched: {exc}"
        log.info("deployment #%d migrated in %.2fs", self.id, time.monotonic() - started)
        return None

    async def _webhook_url(self, name: str) -> str:
        """A webhook URL kept as a secret (url_secret), resolved when a notice is sent."""
        values = await self.ctx.secrets.resolve(self.env, [name], None, "webhook")
        return values[name].value

    async def _crashed(self, exc: Exception) -> r.Rollout:
        reason = f"internal error: {exc}; see {self.ctx.paths.agent_log}"
        before_traffic = self.state is None or self.state.weight == 0
        if before_traffic:
            for name, handle in self.new.items():
                svc = self.env.services[name]
                key = (self.env.name, name, self._new_color(name) or "")
                with contextlib.suppress(Exception):
                    await self.ctx.fleet.stop_started(self.env.app, key, handle, svc.stop_timeout)
        with contextlib.suppress(Exception):
            self.ctx.journal.finish(self.id, "failed", reason)
        return r.Rollout(r.Phase.FAILED, (), 0.0, reason=reason)

    def _refused(self, reason: str) -> r.Rollout:
        self._record("failed", reason)
        self.ctx.journal.finish(self.id, "failed", reason)
        self._announce("failed", reason)
        return r.Rollout(r.Phase.FAILED, (), 0.0, reason=reason)

    async def _cleanup(self) -> None:
        await cancel_and_wait(self.probers)
        if self.analysis is not None:
            await self.analysis.stop()
        # A smoke test still running when the rollout ended (aborted, crashed) is moot: cancelling
        # it kills its process group. Informational hooks finish (each within its timeout).
        if self.smoke_task is not None:
            await cancel_and_wait([self.smoke_task])
        if self.hook_tasks:
            await asyncio.gather(*self.hook_tasks, return_exceptions=True)
        if self.notifier is not None:
            await self.notifier.aclose(timeout=5.0)

    def _options(self, plans: tuple[r.ServicePlan, ...]) -> r.Options:
        ro = self.env.rollout
        checks: list[r.CheckPlan] = []
        for svc in self._analysed_services(plans):
            for check in ro.checks():
                checks.append(r.CheckPlan(check_name(self.env, svc, check), check.failure_limit))
        return r.Options(
            strategy=ro.strategy,
            steps=tuple(r.Step(s.weight, s.pause) for s in ro.steps),
            bake=ro.bake,
            auto_promote=ro.auto_promote,
            on_inconclusive=ro.inconclusive_policy(),
            progress_deadline=ro.progress_deadline,
            on_deadline=ro.on_deadline,
            promote_hint=f"conveyor promote --env {self.env.name}",
            smoke=self.env.hooks.smoke is not None,
            checks=tuple(checks),
        )

    def _record_plan(self, options: r.Options) -> None:
        steps = ", ".join(
            f"{s.weight}%" + (f" (pause {s.pause})" if s.pause is not None else "")
            for s in options.steps
        )
        what = f"canary: {steps}" if options.strategy == "canary" else "blue/green"
        checks = ", ".join(c.name for c in options.checks) or "none"
        self._record(
            "plan",
            f"{what}; bake {options.bake:g}s; analysis: {checks}",
            data={
                "strategy": options.strategy,
                "steps": [{"weight": s.weight, "pause": s.pause} for s in options.steps],
                "bake": options.bake,
                "checks": [c.name for c in options.checks],
            },
        )

    def _analysed_services(self, plans: tuple[r.ServicePlan, ...]) -> list[str]:
        # Only web services that replace an old color can be compared and rolled back.
        return [p.name for p in plans if p.kind == "web" and p.old_color is not None]

    async def _perform(self, actions: list[r.Action]) -> None:
        # Switching back goes first: users are waiting on it, stopping the analysis and the
        # record are not.
        actions = sorted(actions, key=lambda a: not isinstance(a, r.SwitchBack))
        for action in actions:
            if isinstance(action, r.Record):
                self._record(action.state, action.reason, action.service)
            elif isinstance(action, r.StartColor):
                await self._start_new(action.service, action.color)
            elif isinstance(action, r.StopColor):
                await self._stop_color(action)
            elif isinstance(action, r.RunHook):
                self.smoke_task = asyncio.create_task(self._smoke())
            elif isinstance(action, r.Preview):
                await self._preview(action.on)
            elif isinstance(action, r.SwitchTraffic):
                await self._switch(action)
            elif isinstance(action, r.SetWeights):
                await self._set_weights(action)
            elif isinstance(action, r.SwitchBack):
                await self._switch_back(action)
            elif isinstance(action, r.Drain):
                await self._drain(action)
            elif isinstance(action, r.Analyze):
                await self._analyze(action.on)
            elif isinstance(action, r.Announce):
                await self._on_announce(action)
            elif isinstance(action, r.Finish):
                self._finish(action)

    # --- bookkeeping -----------------------------------------------------------------------------

    def _record(
        self,
        state: str,
        reason: str,
        service: str | None = None,
        data: dict[str, Any] | None = None,
        show: bool = True,
    ) -> None:
        self.ctx.journal.record(
            self.id, state, reason, data, emit=self.emit if show else None, service=service
        )

    def _finish(self, action: r.Finish) -> None:
        reason = action.reason
        if self.note:
            reason += f" ({self.note})"
        if action.outcome == "rolled_back" and self.death_to_switch:
            ms = max(self.death_to_switch.values())
            reason += f"; switched back to {self.previous_version} in {ms:.0f} ms"
        if action.outcome == "failed" and self.failed_logs:
            reason += "".join(
                f"\nlast output of {svc}:\n" + "\n".join(f"  {line}" for line in lines)
                for svc, lines in self.failed_logs.items()
            )
        if self.measurements:
            self._record(
                "analysis",
                "latest measurements",
                data={"measurements": [m.to_json() for m in self.measurements.values()]},
                show=False,  # for the history; the user saw each measurement as it came
            )
        self.ctx.journal.finish(self.id, action.outcome, reason)

    def _announce(self, event: str, reason: str) -> None:
        assert self.notifier is not None
        state = self.state
        step = state.step_index + 1 if state is not None and state.step_index >= 0 else None
        self.notifier.send(
            Notice(
                event=event,
                app=self.env.app,
                environment=self.env.name,
                version=self.release.version,
                deployment_id=self.id,
                reason=reason,
                measurements=[m.to_json() for m in self.measurements.values()],
                at=self.ctx.clock.utcnow(),
                previous_version=self.previous_version,
                step=step,
                weight=state.weight if state is not None else None,
            )
        )

    async def _on_announce(self, action: r.Announce) -> None:
        self._announce(action.event, action.reason)
        hook = {
            "switched": "post_switch",
            "succeeded": "post_deploy",
            "rolled_back": "on_rollback",
        }.get(action.event)
        if action.event == "aborted" and self.state is not None and self.state.weight > 0:
            hook = "on_rollback"
        if hook is not None and getattr(self.env.hooks, hook) is not None:
            self._background_hook(hook)

    def _background_hook(self, name: str) -> None:
        """post_switch, post_deploy and on_rollback never hold up the rollout's decisions (a
        slow one must not delay a rollback); they run one after the other, in order."""
        previous = self.hook_tasks[-1] if self.hook_tasks else None

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await self._hook(name)

        self.hook_tasks.append(asyncio.create_task(run()))

    async def _hook(self, name: str) -> HookResult:
        hook = getattr(self.env.hooks, name)
        url = self._url()
        env = self.ctx.fleet.service_env(self.env, "", None, self.release.version, "")
        for key in ("CONVEYOR_SERVICE", "CONVEYOR_COLOR"):
            env.pop(key)  # a hook is about the whole release, not one service or color
        env.update(
            {
                "CONVEYOR_URL": url,
                "CONVEYOR_VERSION": self.release.version,
                "CONVEYOR_ENV": self.env.name,
                "CONVEYOR_HOOK": name,
                "CONVEYOR_DEPLOYMENT": str(self.id),
                "CONVEYOR_BIN": conveyor_bin(),
            }
        )
        if self.previous_version:
            env["CONVEYOR_PREVIOUS_VERSION"] = self.previous_version
        # A hook is about the whole release: it gets every service's secrets (a migration or
        # smoke test needs the database URL); its output is redacted like theirs.
        env.update({n: v.value for n, v in self.secrets.items()})
        self._record("hook", f"running the {name} hook")
        result = await run_hook(
            name, hook, self.tree, env, self.log_path, self.ctx.secrets.redactor
        )
        lines = "".join(f"\n  {line}" for line in result.output[-LOG_TAIL_LINES:])
        self._record(
            "hook",
            f"{name} hook {'passed' if result.ok else 'failed'}: {result.detail}"
            f" ({result.duration:.1f}s){lines if not result.ok else ''}",
            data={"hook": name, "ok": result.ok, "output": result.output[-LOG_TAIL_LINES:]},
        )
        return result

    async def _smoke(self) -> None:
        result = await self._hook("smoke")
        self.queue.put_nowait(r.HookDone("smoke", result.ok, result.detail, self.ctx.clock.now()))

    def _url(self) -> str:
        """The URL of the new version for hooks: its first web service's own port."""
        for name, svc in self.env.services.items():
            handle = self.new.get(name)
            endpoint = handle.endpoint if handle is not None else None
            if svc.kind == "web" and endpoint is not None:
                return f"http://{endpoint.host}:{endpoint.port}"
        return ""

    # --- processes -------------------------------------------------------------------------------

    async def _start_new(self, name: str, color: str) -> None:
        svc = self.env.services[name]
        fleet = self.ctx.fleet
        try:
            handle = await fleet.spawn(
                self.env,
                name,
                color,
                self.release.version,
                self.tree,
                secrets=self.secrets,
                deployment_id=self.id,
            )
        except (RuntimeStartError, OSError, SecretError) as exc:
            self.queue.put_nowait(r.Crash(name, f"could not start: {exc}", self.ctx.clock.now()))
            return
        self.new[name] = handle
        fleet.record(self.env.name, name, color, self.release, handle, "starting", self.id)
        where = f" on {handle.endpoint.host}:{handle.endpoint.port}" if handle.endpoint else ""
        self.emit(
            {
                "step": "started_process",
                "service": name,
                "message": f"{name} {self.release.version} ({color}) started, "
                f"{handle.summary}{where}",
            }
        )
        self.probers.append(asyncio.create_task(self._probe_loop(name, svc, handle)))
        self.watched.add(name)
        self.probers.append(asyncio.create_task(self._watch_exit(name, handle)))

    async def _watch_exit(self, name: str, handle: Handle) -> None:
        """Tell the rollout of a new color's death the moment the runtime sees it."""
        fleet = self.ctx.fleet
        ended = await fleet.exited(handle)
        if ended is None:  # the runtime cannot watch it: the probe loop polls
            self.watched.discard(name)
            return
        if handle_id(handle) in fleet.stopping:
            return  # stopped by this deployment: no crash
        detail = ended.detail
        if ended.ended_at is not None:
            self.deaths[name] = ended.ended_at
            detail += f" at {wall_time(ended.ended_at)}"
        self.failed_logs[name] = fleet.runtime.tail(handle, LOG_TAIL_LINES)
        self.queue.put_nowait(r.Crash(name, detail, self.ctx.clock.now()))

    async def _probe_loop(self, name: str, svc: ServiceConfig, handle: Handle) -> None:
        """Health checks of a new color, from its start until the deployment ends."""
        fleet = self.ctx.fleet
        while True:
            state = await fleet.state(handle)
            if not state.alive:
                if name in self.watched:
                    return  # _watch_exit tells it, with the moment of death
                self.failed_logs[name] = fleet.runtime.tail(handle, LOG_TAIL_LINES)
                self.queue.put_nowait(r.Crash(name, state.detail, self.ctx.clock.now()))
                return
            ok, detail = await fleet.probe(svc, handle)
            if not ok:
                # Keep the latest output at hand: it is what the user needs if this never passes.
                self.failed_logs[name] = fleet.runtime.tail(handle, LOG_TAIL_LINES)
            elif self.state is not None and self.state.phase is r.Phase.STARTING:
                self.failed_logs.pop(name, None)
            self.queue.put_nowait(r.Probe(name, ok, detail, self.ctx.clock.now()))
            await asyncio.sleep(svc.health.interval)

    async def _stop_color(self, action: r.StopColor) -> None:
        svc = self.env.services[action.service]
        key = (self.env.name, action.service, action.color)
        new = self.new.get(action.service)
        if new is not None and self._new_color(action.service) == action.color:
            await self.ctx.fleet.stop_started(self.env.app, key, new, svc.stop_timeout)
            return
        old = self.old.get(action.service)
        if old is not None and old.color == action.color:
            await self.ctx.fleet.stop(old, svc.stop_timeout)
            self._record(
                "stopped",
                f"stopped {action.service} {old.version} ({old.color}): {action.reason}",
                action.service,
            )

    # --- traffic ---------------------------------------------------------------------------------

    def _route(self, name: str, backends: tuple[Backend, ...]) -> Split:
        sticky = self.env.rollout.sticky
        return self.ctx.traffic.split(
            self.env,
            name,
            backends,
            sticky={"header": sticky.header} if sticky.header else {"cookie": sticky.cookie or ""},
        )

    def _endpoint(self, name: str, color: str) -> Endpoint:
        if color == self._new_color(name):
            endpoint = self.new[name].endpoint
        else:
            endpoint = self.ctx.fleet.endpoint(self.old[name])
        assert endpoint is not None
        return endpoint

    def _backend(self, name: str, color: str, weight: int = 100) -> Backend:
        return self.ctx.traffic.backend(color, self._endpoint(name, color), weight)

    def _new_color(self, name: str) -> str | None:
        assert self.state is not None
        return self.state.service(name).plan.new_color

    async def _switch(self, action: r.SwitchTraffic) -> None:
        done: list[str] = []
        try:
            for name, color in action.routes:
                started = time.perf_counter()
                old = self.old.get(name)  # goes on standby: the route's fallback
                spare = self.ctx.fleet.endpoint(old) if old is not None else None
                standby = self.ctx.traffic.backend(old.color, spare) if old and spare else None
                route = self._route(name, (self._backend(name, color),))
                await self.ctx.traffic.push(route, standby=standby)
                self.switch_ms[name] = round((time.perf_counter() - started) * 1000, 2)
                done.append(name)
        except ROUTER_ERRORS as exc:
            await self._restore_old(done)
            self.queue.put_nowait(r.SwitchFailed(str(exc), self.ctx.clock.now()))
            return
        assert self.state is not None
        fleet = self.ctx.fleet
        until = self.ctx.clock.utcnow() + timedelta(seconds=self.env.rollout.standby)
        for svc_state in self.state.services:
            name, color = svc_state.plan.name, svc_state.plan.new_color
            fleet.record(
                self.env.name, name, color, self.release, self.new[name], "active", self.id
            )
            old = self.old.get(name)
            if old is not None and svc_state.plan.kind == "web":
                self.old[name] = fleet.update(old, role="standby", standby_until=until)
        if any(s.plan.kind == "web" and s.plan.old_color for s in self.state.services):
            self._record(
                "standby",
                f"previous version on standby until {until:%H:%M:%S} UTC "
                f"({format_duration(self.env.rollout.standby)})",
            )
        self.queue.put_nowait(r.Switched(self.ctx.clock.now()))

    async def _set_weights(self, action: r.SetWeights) -> None:
        try:
            for name, old, new, weight in action.routes:
                backends = (
                    self._backend(name, new, weight),
                    self._backend(name, old, 100 - weight),
                )
                await self.ctx.traffic.push(self._route(name, backends))
        except ROUTER_ERRORS as exc:
            self.queue.put_nowait(r.SwitchFailed(str(exc), self.ctx.clock.now()))
            return
        self.queue.put_nowait(r.WeightsSet(self.ctx.clock.now()))

    async def _restore_old(self, names: list[str]) -> None:
        for name in names:
            old = self.old.get(name)
            endpoint = self.ctx.fleet.endpoint(old) if old is not None else None
            try:
                if old is not None and endpoint is not None:
                    await self.ctx.traffic.push(
                        self._route(name, (self.ctx.traffic.backend(old.color, endpoint),))
                    )
                else:
                    await self.ctx.traffic.remove(route_name(self.env.name, name))
            except ROUTER_ERRORS as exc:
                log.error("could not restore route %s: %s", name, exc)

    async def _switch_back(self, action: r.SwitchBack) -> None:
        # The old colors are running (standby or still serving): a failure here is retried, since
        # leaving traffic on a release that failed its analysis is the worst outcome.
        for attempt in range(5):
            try:
                for name, color in action.routes:
                    await self.ctx.traffic.push(self._route(name, (self._backend(name, color),)))
                break
            except ROUTER_ERRORS as exc:
                log.error("switching back failed (attempt %d): %s", attempt + 1, exc)
                await asyncio.sleep(0.2 * 2**attempt)
        switched = self.ctx.clock.utcnow().timestamp()
        for name, _color in action.routes:
            old = self.old.get(name)
            if old is not None:
                self.old[name] = self.ctx.fleet.update(old, role="active", standby_until=None)
            if name in self.deaths:
                # From the moment the runtime saw the death to the router's answer.
                self.death_to_switch[name] = round((switched - self.deaths[name]) * 1000, 1)
        after = "".join(
            f"; {ms:.0f} ms after {name} ({self._new_color(name)}) ended"
            for name, ms in self.death_to_switch.items()
        )
        self._record(
            "switched_back",
            f"traffic is back on the previous version{after}",
            data={"death_to_switch_ms": dict(self.death_to_switch)} if after else None,
        )
        self.queue.put_nowait(r.SwitchedBack(self.ctx.clock.now()))

    async def _preview(self, on: bool) -> None:
        for name, svc in self.env.services.items():
            if svc.kind != "web" or name not in self.new:
                continue
            route = route_name(self.env.name, name) + ":preview"
            if not on:
                if self.ctx.traffic.has(route):
                    with contextlib.suppress(*ROUTER_ERRORS):
                        await self.ctx.traffic.remove(route)
                self.previews.pop(name, None)
                continue
            # The preview listens where the public port does: a port free there, not the app's.
            port = svc.preview_port or free_port(svc.listen)
            split = self.ctx.traffic.split(
                self.env,
                name,
                (self._backend(name, self._new_color(name) or ""),),
                preview_port=port,
            )
            try:
                await self.ctx.traffic.push(split)
            except ROUTER_ERRORS as exc:
                self._record("preview", f"could not open the preview port {port}: {exc}", name)
                continue
            self.previews[name] = f"http://{svc.listen}:{port}"
            self._record("preview", f"{name} preview at {self.previews[name]}", name)

    async def _drain(self, action: r.Drain) -> None:
        if action.colors:
            left = await self.ctx.traffic.drain(self.env, action.colors)
            suffix = f"; {left} still in flight after the drain timeout" if left else ""
            self._record("drained", f"in-flight requests on the old colors finished{suffix}")
        self.queue.put_nowait(r.Drained(self.ctx.clock.now()))

    # --- analysis --------------------------------------------------------------------------------

    async def _analyze(self, on: bool) -> None:
        if not on:
            if self.analysis is not None:
                await self.analysis.stop()
                self.analysis = None
            return
        if self.analysis is not None:
            return
        assert self.state is not None
        targets: list[tuple[str, Target]] = []
        for plan in (s.plan for s in self.state.services):
            if plan.kind != "web" or plan.old_color is None:
                continue
            endpoint = self.new[plan.name].endpoint
            targets.append(
                (
                    plan.name,
                    Target(
                        app=self.env.app,
                        environment=self.env.name,
                        service=plan.name,
                        color=plan.new_color,
                        version=self.release.version,
                        port=endpoint.port if endpoint is not None else None,
                        cwd=self.tree,
                        route=route_name(self.env.name, plan.name),
                    ),
                )
            )
        self.analysis = AnalysisRunner(
            self.ctx.traffic.router, self.ctx.clock.now, self._measured, self.ctx.secrets.redactor
        )
        add_checks(self.analysis, self.env, [t for _, t in targets])
        self.analysis.start()

    def _measured(self, name: str, m: Measurement) -> None:
        self.measurements[name] = m
        verdict = m.verdict.value if isinstance(m.verdict, Verdict) else str(m.verdict)
        summary = f"{name}: {m.detail}" if m.detail else name
        if verdict == "fail":
            self._record("measurement", summary, data={"measurement": m.to_json()})
        # Shown when a check's verdict changes and at every failure, not once a second: status
        # has the latest of each, and a wait is said once with the way on.
        if verdict == "fail" or self.verdicts.get(name) != verdict:
            self.emit({"step": "measurement", "message": f"{summary} [{verdict}]"})
        self.verdicts[name] = verdict
        self.queue.put_nowait(r.Measured(name, verdict, summary, self.ctx.clock.now()))  # type: ignore[arg-type]

    # --- status ----------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        state = self.state
        data: dict[str, Any] = {
            "id": self.id,
            "version": self.release.version,
            "strategy": self.env.rollout.strategy,
            "phase": str(state.phase) if state else "pre_deploy",
            "step": state.step_index + 1 if state and state.step_index >= 0 else None,
            "steps": len(self.env.rollout.steps) or None,
            "weight": state.weight if state else 0,
            "waiting": state.waiting if state else "",
            "measurements": [m.to_json() for m in self.measurements.values()],
            "previews": dict(self.previews),
        }
        return data
