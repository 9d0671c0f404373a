"""The blue/green rollout state machine.

Pure: it takes events and returns the next state plus the actions the engine must perform. It never
reads the clock (``now`` comes with every event) and never touches a process or a socket, so every
decision is testable with plain values and a crashed agent can reason about a persisted state.

A deployment moves through these phases::

    starting --(every service healthy)--> switching --(switched)--> draining --(drained)--> succeeded
        |                                      |
        '--(crash / start timeout / abort)-----'--(switch failed)--> failed

Traffic only ever moves in ``SwitchTraffic``, and only once every new color has passed its health
check ``healthy_threshold`` times in a row. On failure every new color that was started is stopped and
the old colors are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

COLORS = ("blue", "green")


def other_color(color: str | None) -> str:
    """The color a new release starts in: the one that is not active (blue when nothing runs)."""
    return "green" if color == "blue" else "blue"


class Phase(StrEnum):
    STARTING = "starting"
    SWITCHING = "switching"
    DRAINING = "draining"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED})

ServiceStatus = Literal["starting", "healthy", "failed"]


@dataclass(frozen=True)
class ServicePlan:
    name: str
    kind: Literal["web", "worker"]
    old_color: str | None
    new_color: str
    healthy_threshold: int
    start_timeout: float


@dataclass(frozen=True)
class ServiceState:
    plan: ServicePlan
    status: ServiceStatus = "starting"
    passes: int = 0
    last_detail: str = ""


@dataclass(frozen=True)
class Rollout:
    phase: Phase
    services: tuple[ServiceState, ...]
    started_at: float
    reason: str = ""

    def service(self, name: str) -> ServiceState:
        for s in self.services:
            if s.plan.name == name:
                return s
        raise KeyError(name)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


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
class Drained:
    now: float


@dataclass(frozen=True)
class Abort:
    reason: str
    now: float


Event = Probe | Crash | Tick | Switched | SwitchFailed | Drained | Abort


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
class SwitchTraffic:
    """Route every web service to its new color, atomically per service."""

    routes: tuple[tuple[str, str], ...]  # (service, color)


@dataclass(frozen=True)
class Drain:
    """Let in-flight requests on the old web colors finish; keep them on standby afterwards."""

    colors: tuple[tuple[str, str], ...]  # (service, old color)


@dataclass(frozen=True)
class Finish:
    outcome: Literal["succeeded", "failed"]
    reason: str


@dataclass(frozen=True)
class Record:
    """A state transition worth persisting and showing to the user."""

    state: str
    reason: str
    service: str | None = None


Action = StartColor | StopColor | SwitchTraffic | Drain | Finish | Record


# --- transitions --------------------------------------------------------------------------------


def begin(plans: tuple[ServicePlan, ...], now: float) -> tuple[Rollout, list[Action]]:
    if not plans:
        raise ValueError("a rollout needs at least one service")
    state = Rollout(Phase.STARTING, tuple(ServiceState(p) for p in plans), started_at=now)
    actions: list[Action] = []
    for p in plans:
        actions.append(Record("starting", f"starting {p.name} ({p.new_color})", p.name))
        actions.append(StartColor(p.name, p.new_color))
    return state, actions


def step(state: Rollout, event: Event) -> tuple[Rollout, list[Action]]:
    """Apply one event. Terminal states absorb every event."""
    if state.terminal:
        return state, []
    if isinstance(event, Abort):
        return _fail(state, f"aborted: {event.reason}")
    if state.phase is Phase.STARTING:
        return _starting(state, event)
    if state.phase is Phase.SWITCHING:
        if isinstance(event, Switched):
            return _switched(state)
        if isinstance(event, SwitchFailed):
            return _fail(state, f"switching traffic failed: {event.detail}")
        if isinstance(event, Crash):
            # The switch is in flight; the engine reverts any route it moved before reporting.
            return _fail(
                state, f"{event.service} crashed while traffic was switching: {event.detail}"
            )
        return state, []
    if state.phase is Phase.DRAINING and isinstance(event, Drained):
        new = replace(state, phase=Phase.SUCCEEDED, reason="live")
        return new, [Record("succeeded", "all services live"), Finish("succeeded", "live")]
    return state, []


def _starting(state: Rollout, event: Event) -> tuple[Rollout, list[Action]]:
    if isinstance(event, Crash):
        svc = state.service(event.service)
        return _fail(
            state,
            f"{svc.plan.name} ({svc.plan.new_color}) exited before it became healthy: {event.detail}",
        )
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
    if isinstance(event, Probe):
        svc = state.service(event.service)
        if svc.status != "starting":
            return state, []
        if event.ok:
            passes = svc.passes + 1
            status: ServiceStatus = (
                "healthy" if passes >= svc.plan.healthy_threshold else "starting"
            )
        else:
            passes, status = 0, "starting"
        updated = replace(svc, passes=passes, status=status, last_detail=event.detail)
        services = tuple(updated if s.plan.name == svc.plan.name else s for s in state.services)
        state = replace(state, services=services)
        actions: list[Action] = []
        if status == "healthy":
            actions.append(
                Record(
                    "healthy", f"{svc.plan.name} ({svc.plan.new_color}) is healthy", svc.plan.name
                )
            )
        if all(s.status == "healthy" for s in services):
            routes = tuple(
                (s.plan.name, s.plan.new_color) for s in services if s.plan.kind == "web"
            )
            state = replace(state, phase=Phase.SWITCHING)
            actions.append(Record("switching", "every new color is healthy: switching traffic"))
            actions.append(SwitchTraffic(routes))
        return state, actions
    return state, []


def _switched(state: Rollout) -> tuple[Rollout, list[Action]]:
    actions: list[Action] = [Record("switched", "traffic is on the new colors")]
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
    state = replace(state, phase=Phase.DRAINING)
    actions.append(Drain(tuple(drain)))
    return state, actions


def _fail(state: Rollout, reason: str) -> tuple[Rollout, list[Action]]:
    actions: list[Action] = [
        StopColor(s.plan.name, s.plan.new_color, "deployment failed") for s in state.services
    ]
    actions.append(Record("failed", reason))
    actions.append(Finish("failed", reason))
    return replace(state, phase=Phase.FAILED, reason=reason), actions


# --- rollback -----------------------------------------------------------------------------------


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
