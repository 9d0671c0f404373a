"""The rollout state machine: blue/green and canary, with smoke tests, analysis and rollback.

Pure: it takes events and returns the next state plus the actions the engine must perform. It never
reads the clock (``now`` comes with every event) and never touches a process or a socket, so every
decision is testable with plain values.

    starting ─(all healthy)─▶ smoke ─(passed)─▶ awaiting_promotion ─(promote)─┐   (blue/green, manual)
                                                 │                           ▼
                                                 ├───────────────────────▶ switching ─▶ draining ─▶ baking ─▶ succeeded
                                                 └──▶ step 1 ─▶ step 2 ─▶ … step 100% ─┘               (canary)
    before any traffic moved:  crash / start timeout / smoke failed / abort ─▶ failed | aborted
    after traffic moved:       analysis failed / unhealthy / crash / abort ─▶ rolling_back ─▶ rolled_back | aborted

Traffic only moves to a new color once every new color has passed its health check
``healthy_threshold`` times in a row and the smoke test (if any) passed. Old web colors are never
stopped by the machine: they stay on standby, and the engine's standby timer stops them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from conveyor.core.durations import format_duration

COLORS = ("blue", "green")


def other_color(color: str | None) -> str:
    """The color a new release starts in: the one that is not active (blue when nothing runs)."""
    return "green" if color == "blue" else "blue"


class Phase(StrEnum):
    STARTING = "starting"
    SMOKE = "smoke"
    AWAITING_PROMOTION = "awaiting_promotion"
    SWITCHING = "switching"
    STEP = "step"
    DRAINING = "draining"
    BAKING = "baking"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK, Phase.ABORTED})
# Phases in which some users already see the new version: a problem now means switching back.
TRAFFIC = frozenset({Phase.SWITCHING, Phase.STEP, Phase.DRAINING, Phase.BAKING})
ANALYSED = frozenset({Phase.STEP, Phase.BAKING})

ServiceStatus = Literal["starting", "healthy"]
Pause = float | Literal["manual"] | None


@dataclass(frozen=True)
class ServicePlan:
    name: str
    kind: Literal["web", "worker"]
    old_color: str | None
    new_color: str
    healthy_threshold: int
    start_timeout: float
    unhealthy_threshold: int = 3


@dataclass(frozen=True)
class Step:
    weight: int
    pause: Pause = None


@dataclass(frozen=True)
class CheckPlan:
    name: str
    failure_limit: int


@dataclass(frozen=True)
class Options:
    strategy: Literal["bluegreen", "canary"] = "bluegreen"
    steps: tuple[Step, ...] = ()
    bake: float = 0.0
    auto_promote: bool = True
    on_inconclusive: Literal["pass", "fail", "wait"] = "wait"
    smoke: bool = False
    checks: tuple[CheckPlan, ...] = ()
    # Every wait (for data, a manual gate or step) ends: after this long the deployment is
    # aborted (traffic back on the old version) or, with on_deadline = "promote", goes on.
    progress_deadline: float = 600.0
    on_deadline: Literal["abort", "promote"] = "abort"
    promote_hint: str = "conveyor promote"  # the command that ends a wait, for the sentence


@dataclass(frozen=True)
class ServiceState:
    plan: ServicePlan
    status: ServiceStatus = "starting"
    passes: int = 0
    failures: int = 0  # consecutive failed health checks once traffic moved
    last_detail: str = ""


@dataclass(frozen=True)
class CheckState:
    plan: CheckPlan
    failures: int = 0  # consecutive failed measurements
    conclusive: bool = False  # a conclusive measurement since the current step or bake began
    last: str = ""  # the latest measurement, for humans


@dataclass(frozen=True)
class Rollout:
    phase: Phase
    services: tuple[ServiceState, ...]
    started_at: float
    options: Options = field(default_factory=Options)
    checks: tuple[CheckState, ...] = ()
    phase_started_at: float = 0.0
    step_index: int = -1
    weight: int = 0  # share of requests on the new colors, 0..100
    waiting: str = (
        ""  # why the rollout is waiting (manual pause, inconclusive analysis), for status
    )
    waiting_since: float = 0.0  # when the current wait began (progress_deadline counts from it)
    analyzing: bool = False
    reason: str = ""

    def service(self, name: str) -> ServiceState:
        for s in self.services:
            if s.plan.name == name:
                return s
        raise KeyError(name)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def has_old(self) -> bool:
        return any(s.plan.old_color for s in self.services if s.plan.kind == "web")


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One health check of a new color: ``ok`` or not, with a human-readable detail."""

    service: str
    ok: bool
    detail: str
    now: float


@dataclass(frozen=True)
class Crash:
    service: str
    detail: str
    now: float


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class Switched:
    now: float


@dataclass(frozen=True)
class SwitchFailed:
    detail: str
    now: float


@dataclass(frozen=True)
class WeightsSet:
    now: float


@dataclass(frozen=True)
class Drained:
    now: float


@dataclass(frozen=True)
class SwitchedBack:
    now: float


@dataclass(frozen=True)
class HookDone:
    name: str
    ok: bool
    detail: str
    now: float


@dataclass(frozen=True)
class Measured:
    check: str
    verdict: Literal["pass", "fail", "inconclusive"]
    summary: str  # e.g. "error_rate 4.8% > 1%"
    now: float


@dataclass(frozen=True)
class Promote:
    full: bool
    now: float


@dataclass(frozen=True)
class Abort:
    reason: str
    now: float


Event = (
    Probe
    | Crash
    | Tick
    | Switched
    | SwitchFailed
    | WeightsSet
    | Drained
    | SwitchedBack
    | HookDone
    | Measured
    | Promote
    | Abort
)


# --- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartColor:
    service: str
    color: str


@dataclass(frozen=True)
class StopColor:
    service: str
    color: str
    reason: str


@dataclass(frozen=True)
class RunHook:
    name: str  # the machine only waits on "smoke"; the engine runs the others on announcements


@dataclass(frozen=True)
class Preview:
    """Make the new web colors reachable on their preview ports (on) or no longer (off)."""

    on: bool


@dataclass(frozen=True)
class SwitchTraffic:
    """Route every web service to its new color, atomically per service."""

    routes: tuple[tuple[str, str], ...]  # (service, color)


@dataclass(frozen=True)
class SetWeights:
    """Split each web service's requests between its old and new color (canary)."""

    routes: tuple[tuple[str, str, str, int], ...]  # (service, old color, new color, new weight)


@dataclass(frozen=True)
class SwitchBack:
    """Send all traffic back to the old colors."""

    routes: tuple[tuple[str, str], ...]  # (service, old color)


@dataclass(frozen=True)
class Drain:
    """Let in-flight requests on the old web colors finish; keep them on standby afterwards."""

    colors: tuple[tuple[str, str], ...]  # (service, old color)


@dataclass(frozen=True)
class Analyze:
    """Start (on) or stop (off) measuring the analysis checks against the new colors."""

    on: bool


@dataclass(frozen=True)
class Announce:
    """A deployment event for notifications: started, switched, step, succeeded, failed…"""

    event: str
    reason: str


@dataclass(frozen=True)
class Finish:
    outcome: Literal["succeeded", "failed", "rolled_back", "aborted"]
    reason: str


@dataclass(frozen=True)
class Record:
    """A state transition worth persisting and showing to the user."""

    state: str
    reason: str
    service: str | None = None


Action = (
    StartColor
    | StopColor
    | RunHook
    | Preview
    | SwitchTraffic
    | SetWeights
    | SwitchBack
    | Drain
    | Analyze
    | Announce
    | Finish
    | Record
)

Result = tuple[Rollout, list[Action]]


# --- transitions --------------------------------------------------------------------------------


def begin(plans: tuple[ServicePlan, ...], now: float, options: Options | None = None) -> Result:
    if not plans:
        raise ValueError("a rollout needs at least one service")
    opts = options or Options()
    if opts.strategy == "canary" and (not opts.steps or opts.steps[-1].weight != 100):
        raise ValueError("a canary rollout needs steps ending at weight 100")
    state = Rollout(
        Phase.STARTING,
        tuple(ServiceState(p) for p in plans),
        started_at=now,
        options=opts,
        checks=tuple(CheckState(c) for c in opts.checks),
        phase_started_at=now,
    )
    actions: list[Action] = [Announce("started", "deployment started")]
    for p in plans:
        actions.append(Record("starting", f"starting {p.name} ({p.new_color})", p.name))
        actions.append(StartColor(p.name, p.new_color))
    return state, actions


def step(state: Rollout, event: Event) -> Result:
    """Apply one event. Terminal states absorb every event."""
    if state.terminal:
        return state, []
    if isinstance(event, Abort):
        return _abort(state, event)
    if (
        state.waiting
        and isinstance(event, Tick)
        and event.now - state.waiting_since >= state.options.progress_deadline
    ):
        return _deadline(state, event.now)
    phase = state.phase
    if phase is Phase.STARTING:
        return _starting(state, event)
    if phase is Phase.SMOKE:
        if isinstance(event, HookDone) and event.name == "smoke":
            if not event.ok:
                return _fail(state, f"smoke test failed: {event.detail}")
            return _after_smoke(state, event.now, [Record("smoke", "smoke test passed")])
        if isinstance(event, Crash):
            return _crash_before_traffic(state, event)
        return state, []
    if phase is Phase.AWAITING_PROMOTION:
        if isinstance(event, Promote):
            return _go_live(
                state, event.now, [Preview(False), Record("promoted", "promoted by hand")]
            )
        if isinstance(event, Crash):
            return _crash_before_traffic(state, event)
        return state, []
    if phase is Phase.ROLLING_BACK:
        if isinstance(event, SwitchedBack):
            return _rolled_back(state)
        return state, []
    # From here on users see the new version: trouble means switching back.
    trouble = _trouble(state, event)
    if trouble is not None:
        return trouble
    if phase is Phase.SWITCHING:
        if isinstance(event, Switched):
            return _switched(state, event.now)
        if isinstance(event, SwitchFailed):
            return _fail(state, f"switching traffic failed: {event.detail}")
        return state, []
    if phase is Phase.STEP:
        return _in_step(state, event)
    if phase is Phase.DRAINING:
        if isinstance(event, Drained):
            return _drained(state, event.now)
        return state, []
    if phase is Phase.BAKING:
        return _baking(state, event)
    return state, []  # pragma: no cover - every phase is handled above


def _starting(state: Rollout, event: Event) -> Result:
    if isinstance(event, Crash):
        return _crash_before_traffic(state, event)
    if isinstance(event, Tick):
        for svc in state.services:
            if svc.status == "starting" and event.now - state.started_at >= svc.plan.start_timeout:
                last = f" (last check: {svc.last_detail})" if svc.last_detail else ""
                return _fail(
                    state,
                    f"{svc.plan.name} ({svc.plan.new_color}) was not healthy within "
                    f"{svc.plan.start_timeout:g}s{last}",
                )
        return state, []
    if not isinstance(event, Probe):
        return state, []
    svc = state.service(event.service)
    if svc.status != "starting":
        return state, []
    passes = svc.passes + 1 if event.ok else 0
    status: ServiceStatus = "healthy" if passes >= svc.plan.healthy_threshold else "starting"
    state = _with_service(
        state, replace(svc, passes=passes, status=status, last_detail=event.detail)
    )
    actions: list[Action] = []
    if status == "healthy":
        actions.append(
            Record("healthy", f"{svc.plan.name} ({svc.plan.new_color}) is healthy", svc.plan.name)
        )
    if all(s.status == "healthy" for s in state.services):
        if state.options.smoke:
            state = replace(state, phase=Phase.SMOKE, phase_started_at=event.now)
            actions += [Record("smoke", "running the smoke test"), RunHook("smoke")]
            return state, actions
        return _after_smoke(state, event.now, actions)
    return state, actions


def _after_smoke(state: Rollout, now: float, actions: list[Action]) -> Result:
    if state.options.strategy == "bluegreen" and not state.options.auto_promote and state.has_old:
        state = _wait(
            replace(state, phase=Phase.AWAITING_PROMOTION, phase_started_at=now),
            f"manual promotion: run `{state.options.promote_hint}`",
            now,
        )
        actions += [
            Preview(True),
            Record(
                "awaiting_promotion",
                "healthy and reachable on the preview port: waiting for promote",
            ),
        ]
        return state, actions
    return _go_live(state, now, actions)


def _go_live(state: Rollout, now: float, actions: list[Action]) -> Result:
    state = replace(state, waiting="")
    if state.options.strategy == "canary" and state.has_old:
        return _enter_step(state, 0, now, actions)
    routes = tuple((s.plan.name, s.plan.new_color) for s in state.services if s.plan.kind == "web")
    state = replace(state, phase=Phase.SWITCHING, phase_started_at=now)
    actions += [
        Record("switching", "every new color is healthy: switching traffic"),
        SwitchTraffic(routes),
    ]
    return state, actions


def _enter_step(state: Rollout, index: int, now: float, actions: list[Action]) -> Result:
    weight = state.options.steps[index].weight
    if weight >= 100:
        # The last step is the switch itself: same path as blue/green from here on.
        routes = tuple(
            (s.plan.name, s.plan.new_color) for s in state.services if s.plan.kind == "web"
        )
        state = replace(
            state, phase=Phase.SWITCHING, step_index=index, phase_started_at=now, waiting=""
        )
        actions += [
            Record("step", f"step {index + 1}/{len(state.options.steps)}: 100% of traffic"),
            SwitchTraffic(routes),
        ]
        return state, actions
    routes4 = tuple(
        (s.plan.name, s.plan.old_color or s.plan.new_color, s.plan.new_color, weight)
        for s in state.services
        if s.plan.kind == "web"
    )
    state = replace(
        state,
        phase=Phase.STEP,
        step_index=index,
        weight=weight,
        phase_started_at=now,
        checks=tuple(replace(c, conclusive=False) for c in state.checks),
        waiting="",
    )
    actions += [
        Record("step", f"step {index + 1}/{len(state.options.steps)}: {weight}% of traffic"),
        SetWeights(routes4),
        Announce("step", f"step {index + 1}: {weight}% of traffic on the new version"),
    ]
    return _start_analysis(state, actions)


def _start_analysis(state: Rollout, actions: list[Action]) -> Result:
    if state.checks and not state.analyzing:
        return replace(state, analyzing=True), [*actions, Analyze(True)]
    return state, actions


def _in_step(state: Rollout, event: Event) -> Result:
    if isinstance(event, Measured):
        return _measured(state, event)
    if isinstance(event, Promote):
        target = len(state.options.steps) - 1 if event.full else state.step_index + 1
        return _enter_step(state, target, event.now, [Record("promoted", "promoted by hand")])
    if isinstance(event, (Tick, WeightsSet)):
        pause = state.options.steps[state.step_index].pause
        if pause == "manual":
            if not state.waiting:
                waiting = f"manual pause: run `{state.options.promote_hint}` to continue"
                return _wait(state, waiting, event.now), [Record("paused", waiting)]
            return state, []
        if pause is not None and event.now - state.phase_started_at < pause:
            return state, []
        return _gate(state, event.now, lambda s, now: _enter_step(s, s.step_index + 1, now, []))
    if isinstance(event, SwitchFailed):
        return _rollback(state, f"changing traffic weights failed: {event.detail}")
    return state, []


def _switched(state: Rollout, now: float) -> Result:
    actions: list[Action] = [
        Record("switched", "traffic is on the new colors"),
        Announce("switched", "traffic is on the new version"),
    ]
    drain: list[tuple[str, str]] = []
    for s in state.services:
        if s.plan.old_color is None:
            continue
        if s.plan.kind == "worker":
            # Workers have no traffic to drain and no standby: two versions consuming the same
            # queue for ten minutes would surprise more than it helps.
            actions.append(StopColor(s.plan.name, s.plan.old_color, "replaced by the new version"))
        else:
            drain.append((s.plan.name, s.plan.old_color))
    state = replace(state, phase=Phase.DRAINING, weight=100, phase_started_at=now)
    actions.append(Drain(tuple(drain)))
    return state, actions


def _drained(state: Rollout, now: float) -> Result:
    opts = state.options
    if opts.bake > 0 and state.checks and state.has_old:
        state = replace(
            state,
            phase=Phase.BAKING,
            phase_started_at=now,
            checks=tuple(replace(c, conclusive=False) for c in state.checks),
        )
        return _start_analysis(
            state, [Record("baking", f"baking for {opts.bake:g}s with analysis")]
        )
    return _succeed(state, "all services live")


def _baking(state: Rollout, event: Event) -> Result:
    if isinstance(event, Measured):
        return _measured(state, event)
    if isinstance(event, Promote):
        return _succeed(state, "promoted by hand during the bake")
    if isinstance(event, Tick) and event.now - state.phase_started_at >= state.options.bake:
        return _gate(state, event.now, lambda s, _now: _succeed(s, "bake passed"))
    return state, []


def _gate(state: Rollout, now: float, proceed: Callable[[Rollout, float], Result]) -> Result:
    """End of a step's pause or of the bake: go on unless analysis was inconclusive."""
    unknown = [c for c in state.checks if not c.conclusive]
    if not unknown:
        return proceed(state, now)
    names = ", ".join(f"{c.plan.name} ({c.last or 'no measurement'})" for c in unknown)
    seen = ", ".join(c.last or f"{c.plan.name}: no measurement" for c in unknown)
    policy = state.options.on_inconclusive
    if policy == "pass":
        if state.phase is Phase.BAKING:
            # Live, but nothing showed it works: say so plainly, in the history and the webhook.
            return _succeed(state, f"live, unverified: {seen}")
        state, actions = proceed(state, now)
        return state, [
            Record("inconclusive", f"analysis inconclusive, passed by policy: {names}"),
            *actions,
        ]
    if policy == "fail":
        return _rollback(state, f"analysis inconclusive: {names}")
    waiting = (
        f"waiting for traffic: {seen}; send traffic, or run `{state.options.promote_hint}` "
        "to accept"
    )
    if not state.waiting:
        # Said once; the sentence (its counts) is kept up to date for status.
        return _wait(state, waiting, now), [Record("waiting", waiting)]
    return replace(state, waiting=waiting), []


def tally(check: CheckState, event: Measured) -> CheckState:
    """Fold one measurement into its check's tally: the one copy of the rule that fails analysis.

    A FAIL adds one to the run of consecutive failures; the analysis fails once the run reaches
    `failure_limit`. A PASS ends the run. An INCONCLUSIVE measurement neither ends nor extends it:
    missing data is evidence neither that the release is healthy nor that it is broken, so a
    FAIL, a gap in the data and another FAIL are two failures in a row. `conclusive` says whether
    the current step or bake has had a PASS or a FAIL; `on_inconclusive` is about the ones without.
    The run is not reset when a canary step or the bake begins: users saw each of those failures.
    """
    if event.verdict == "fail":
        return replace(check, failures=check.failures + 1, conclusive=True, last=event.summary)
    if event.verdict == "pass":
        return replace(check, failures=0, conclusive=True, last=event.summary)
    return replace(check, last=event.summary)


def _measured(state: Rollout, event: Measured) -> Result:
    checks = tuple(tally(c, event) if c.plan.name == event.check else c for c in state.checks)
    state = replace(state, checks=checks)
    # Only the check just measured can have reached its limit: any other would have rolled back.
    failed = next((c for c in checks if c.failures >= c.plan.failure_limit), None)
    if failed is not None:
        return _rollback(
            state,
            f"analysis failed: {failed.last} ({failed.failures} failed measurements in a row)",
        )
    if state.waiting.startswith("waiting for traffic") and all(c.conclusive for c in state.checks):
        state = replace(state, waiting="")
        return step(state, Tick(event.now))
    return state, []


def _wait(state: Rollout, why: str, now: float) -> Rollout:
    """Begin waiting (the deadline counts from here)."""
    return replace(state, waiting=why, waiting_since=now)


def _deadline(state: Rollout, now: float) -> Result:
    """A wait outlived progress_deadline: abort (traffic back), or go on as if promoted."""
    opts = state.options
    waited = state.waiting.split("; ")[0]  # what it waited for, without the way on
    why = f"progress deadline ({format_duration(opts.progress_deadline)}) passed while {waited}"
    if opts.on_deadline == "promote":
        record = Record("deadline", f"{why}: going on (on_deadline = promote)")
        if state.phase is Phase.BAKING:
            return _succeed(state, f"live, unverified: {why}")
        state, actions = step(replace(state, waiting=""), Promote(False, now))
        return state, [record, *actions]
    reason = f"aborted: {why}"
    if state.phase in TRAFFIC:
        return _rollback(state, reason, aborting=True)
    return _finish_bad(state, Phase.ABORTED, reason)


def _trouble(state: Rollout, event: Event) -> Result | None:
    """Crashes and failing health checks of a new color once it takes traffic."""
    if isinstance(event, Crash):
        svc = state.service(event.service)
        return _rollback(state, f"{svc.plan.name} ({svc.plan.new_color}) crashed: {event.detail}")
    if isinstance(event, Probe):
        svc = state.service(event.service)
        failures = 0 if event.ok else svc.failures + 1
        state = _with_service(state, replace(svc, failures=failures, last_detail=event.detail))
        if failures >= svc.plan.unhealthy_threshold:
            return _rollback(
                state,
                f"{svc.plan.name} ({svc.plan.new_color}) failed {failures} health checks in a row "
                f"(last: {event.detail})",
            )
        return state, []
    return None


def _rollback(state: Rollout, reason: str, aborting: bool = False) -> Result:
    routes = tuple(
        (s.plan.name, s.plan.old_color)
        for s in state.services
        if s.plan.kind == "web" and s.plan.old_color is not None
    )
    if not routes:
        # A first deployment has nothing to go back to: stopping it would be an outage.
        return _finish_bad(
            state, Phase.FAILED, f"{reason}; no previous version to roll back to", stop=False
        )
    state = replace(state, phase=Phase.ROLLING_BACK, reason=reason, waiting="", analyzing=False)
    kind = "aborting" if aborting else "rolling_back"
    actions: list[Action] = [Analyze(False), Record(kind, reason), SwitchBack(routes)]
    return state, actions


def _rolled_back(state: Rollout) -> Result:
    aborted = state.reason.startswith("aborted")
    return _finish_bad(state, Phase.ABORTED if aborted else Phase.ROLLED_BACK, state.reason)


def _abort(state: Rollout, event: Abort) -> Result:
    reason = f"aborted: {event.reason}"
    if state.phase in TRAFFIC:
        return _rollback(state, reason, aborting=True)
    if state.phase is Phase.ROLLING_BACK:
        return state, []
    return _finish_bad(state, Phase.ABORTED, reason)


def _crash_before_traffic(state: Rollout, event: Crash) -> Result:
    svc = state.service(event.service)
    return _fail(
        state,
        f"{svc.plan.name} ({svc.plan.new_color}) exited before it took traffic: {event.detail}",
    )


def _fail(state: Rollout, reason: str) -> Result:
    return _finish_bad(state, Phase.FAILED, reason)


def _finish_bad(state: Rollout, phase: Phase, reason: str, stop: bool = True) -> Result:
    actions: list[Action] = [Analyze(False), Preview(False)]
    if stop:
        actions += [
            StopColor(s.plan.name, s.plan.new_color, "deployment failed") for s in state.services
        ]
    outcome: Literal["failed", "rolled_back", "aborted"] = (
        "rolled_back"
        if phase is Phase.ROLLED_BACK
        else "aborted"
        if phase is Phase.ABORTED
        else "failed"
    )
    actions += [Record(outcome, reason), Announce(outcome, reason), Finish(outcome, reason)]
    return replace(state, phase=phase, reason=reason, waiting="", analyzing=False), actions


def _succeed(state: Rollout, reason: str) -> Result:
    state = replace(state, phase=Phase.SUCCEEDED, reason=reason, waiting="", analyzing=False)
    return state, [
        Analyze(False),
        Record("succeeded", reason),
        Announce("succeeded", reason),
        Finish("succeeded", reason),
    ]


def _with_service(state: Rollout, svc: ServiceState) -> Rollout:
    services = tuple(svc if s.plan.name == svc.plan.name else s for s in state.services)
    return replace(state, services=services)


# --- rollback of an environment (outside a rollout) ----------------------------------------------


@dataclass(frozen=True)
class LiveColor:
    service: str
    kind: Literal["web", "worker"]
    color: str
    version: str
    role: Literal["active", "standby"]
    alive: bool


@dataclass(frozen=True)
class RollbackPlan:
    """Either switch to the running standby colors, or redeploy an earlier version."""

    mode: Literal["switch", "redeploy", "none"]
    version: str | None
    switch: tuple[tuple[str, str], ...] = ()  # (service, standby color) for web services
    reason: str = ""


def plan_rollback(live: tuple[LiveColor, ...], previous_version: str | None) -> RollbackPlan:
    """Decide how to roll back an environment.

    The standby colors are used only when every web service that is live has one that is running
    and they all hold the same version: a rollback that leaves services on mixed versions is a
    surprise nobody asked for.
    """
    web_active = [c for c in live if c.kind == "web" and c.role == "active"]
    standby = {c.service: c for c in live if c.role == "standby" and c.alive}
    if web_active and all(a.service in standby for a in web_active):
        versions = {standby[a.service].version for a in web_active}
        if len(versions) == 1:
            version = versions.pop()
            routes = tuple((a.service, standby[a.service].color) for a in web_active)
            return RollbackPlan("switch", version, routes, f"switching back to standby {version}")
    if previous_version is not None:
        return RollbackPlan(
            "redeploy", previous_version, (), f"no standby running: redeploying {previous_version}"
        )
    return RollbackPlan(
        "none", None, (), "nothing to roll back to: no earlier successful deployment"
    )
