"""Promotion gates: may release V go to environment E now, and if not, why.

A pure function of the environment's rules, the recorded facts and the clock: no store, no clock
read, no config file. The agent gathers the facts (conveyor.promotion) and asks `decide`; the
answer lists every gate, met or not, and for each unmet one what would meet it.

Freeze windows are parsed here too, so that configuration and decision share one reading of
"Fri 16:00 - Mon 08:00" and "2026-12-24 - 2026-12-27".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from conveyor.core.durations import format_duration

# --- freeze windows -----------------------------------------------------------------------------

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEK_MINUTES = 7 * 24 * 60
_TIME = r"(\d{1,2}):(\d{2})"
_WEEKLY = re.compile(rf"([A-Za-z]+)\s+{_TIME}\s+-\s+([A-Za-z]+)\s+{_TIME}")
_DATES = re.compile(
    rf"(\d{{4}}-\d{{2}}-\d{{2}})(?:[ T]{_TIME})?\s+-\s+(\d{{4}}-\d{{2}}-\d{{2}})(?:[ T]{_TIME})?"
)
FREEZE_EXAMPLES = '"Fri 16:00 - Mon 08:00" or "2026-12-24 - 2026-12-27"'


@dataclass(frozen=True)
class WeeklyWindow:
    """Every week from `start` to `end` (minutes since Monday 00:00; end excluded, may wrap)."""

    text: str
    start: int
    end: int

    def ends_after(self, local: datetime) -> datetime | None:
        """When the window that holds the wall time `local` ends; None when it does not hold it."""
        minute = local.weekday() * 24 * 60 + local.hour * 60 + local.minute
        inside = (
            self.start <= minute < self.end
            if self.start < self.end
            else minute >= self.start or minute < self.end
        )
        if not inside:
            return None
        base = local.replace(second=0, microsecond=0)
        return base + timedelta(minutes=(self.end - minute) % WEEK_MINUTES)


@dataclass(frozen=True)
class DateWindow:
    """From `start` to `end` (wall times, end excluded): a date alone means the whole day."""

    text: str
    start: datetime
    end: datetime

    def ends_after(self, local: datetime) -> datetime | None:
        return self.end if self.start <= local < self.end else None


FreezeWindow = WeeklyWindow | DateWindow


def _day(name: str) -> int:
    lowered = name.lower()
    if lowered in DAYS:
        return DAYS.index(lowered)
    if lowered in _FULL_DAYS:
        return _FULL_DAYS.index(lowered)
    raise ValueError(f"unknown day {name!r} (use Mon, Tue, Wed, Thu, Fri, Sat or Sun)")


def _minutes(hour: str, minute: str) -> int:
    h, m = int(hour), int(minute)
    if h > 23 or m > 59:
        raise ValueError(f"invalid time {hour}:{minute} (use 00:00 to 23:59)")
    return h * 60 + m


def _moment(day: str, hour: str | None, minute: str | None) -> datetime:
    try:
        when = date.fromisoformat(day)
    except ValueError:
        raise ValueError(f"invalid date {day!r} (use YYYY-MM-DD)") from None
    at = _minutes(hour, minute) if hour is not None and minute is not None else 0
    return datetime(when.year, when.month, when.day) + timedelta(minutes=at)


def parse_freeze(text: object) -> FreezeWindow:
    """A freeze window from its text; ValueError saying what is accepted."""
    if not isinstance(text, str):
        raise ValueError(f"a freeze window is a string such as {FREEZE_EXAMPLES}")
    stripped = text.strip()
    weekly = _WEEKLY.fullmatch(stripped)
    if weekly:
        d1, h1, m1, d2, h2, m2 = weekly.groups()
        start = _day(d1) * 24 * 60 + _minutes(h1, m1)
        end = _day(d2) * 24 * 60 + _minutes(h2, m2)
        if start == end:
            raise ValueError(f"freeze window {text!r} starts when it ends: it would be empty")
        return WeeklyWindow(stripped, start, end)
    dates = _DATES.fullmatch(stripped)
    if dates:
        day1, h1, m1, day2, h2, m2 = dates.groups()
        start_at = _moment(day1, h1, m1)
        end_at = _moment(day2, h2, m2)
        if h2 is None:
            end_at += timedelta(days=1)  # "2026-12-24 - 2026-12-27" includes the 27th
        if end_at <= start_at:
            raise ValueError(f"freeze window {text!r} ends before it starts")
        return DateWindow(stripped, start_at, end_at)
    raise ValueError(f"invalid freeze window {text!r} (use {FREEZE_EXAMPLES})")


def freeze_in_force(
    windows: Iterable[FreezeWindow], now: datetime, tz: tzinfo
) -> tuple[FreezeWindow, datetime] | None:
    """The window in force at `now` and when the freeze ends (aware, in `tz`), or None.

    Windows are read in wall time of `tz`. Overlapping or adjoining windows are one freeze: the
    end is the last of them.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    windows = tuple(windows)
    local = now.astimezone(tz).replace(tzinfo=None)
    found: FreezeWindow | None = None
    end = local
    # A bounded walk: each step moves to a window's end; a week of weekly windows is covered.
    for _ in range(len(windows) + 1):
        moved = False
        for window in windows:
            ends = window.ends_after(end)
            if ends is not None and ends > end:
                found = found or window
                end = ends
                moved = True
        if not moved:
            break
    if found is None:
        return None
    return found, end.replace(tzinfo=tz)


# --- the facts and the rules --------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """One environment's gates, as configured ([environments.NAME] and [access])."""

    after: str | None = None
    checks: tuple[str, ...] = ()
    soak: float = 0.0
    approvals: int = 0
    approvers: tuple[str, ...] = ()  # empty: anyone but the deployer
    freeze: tuple[FreezeWindow, ...] = ()
    tz: tzinfo = UTC
    timezone: str = "UTC"  # tz's name, for messages
    require_tag: bool = False
    admins: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReleaseFact:
    version: str
    created_at: datetime
    commit: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeploymentFact:
    """A deployment as history shows it: `outcome` is "rolled_back" once a later one rolled it
    back. Ids grow with time."""

    id: int
    environment: str
    version: str
    kind: str  # deploy, rollback, start, stop
    outcome: str  # in_progress, succeeded, failed, rolled_back, aborted
    started_at: datetime
    finished_at: datetime | None = None


@dataclass(frozen=True)
class CheckFact:
    name: str
    version: str
    passed: bool
    at: datetime
    actor: str = ""
    url: str | None = None


@dataclass(frozen=True)
class ApprovalFact:
    """An approval or a rejection of one release for one environment."""

    version: str
    environment: str
    actor: str
    decision: str  # "approve" or "reject"
    at: datetime
    comment: str = ""
    withdrawn: bool = False


@dataclass(frozen=True)
class Facts:
    release: ReleaseFact
    # Every release's creation time, by version: what "a newer release" means.
    created: dict[str, datetime] = field(default_factory=dict)
    # The deployments of the environment itself and of `after` (any order).
    deployments: tuple[DeploymentFact, ...] = ()
    checks: tuple[CheckFact, ...] = ()
    # Approvals and rejections for the environment, of any release.
    approvals: tuple[ApprovalFact, ...] = ()


@dataclass(frozen=True)
class Override:
    """`deploy --override-freeze --reason ...` by `user`."""

    user: str
    reason: str


# --- the decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    gate: str  # after, soak, check, approvals, rejected, freeze, require_tag
    label: str  # what its line starts with: "staging", "check tests", "approvals"
    met: bool
    detail: str  # the facts, in words
    remedy: str = ""  # what would meet it (unmet gates only)

    def line(self) -> str:
        return f"{self.label}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "label": self.label,
            "met": self.met,
            "detail": self.detail,
            "remedy": self.remedy or None,
        }


@dataclass(frozen=True)
class Decision:
    version: str
    environment: str
    results: tuple[GateResult, ...]

    @property
    def allowed(self) -> bool:
        return all(r.met for r in self.results)

    @property
    def unmet(self) -> tuple[GateResult, ...]:
        return tuple(r for r in self.results if not r.met)

    def refusal(self) -> str:
        """Why a deploy is refused: one line per unmet gate, each with its way on."""
        lines = [f"{self.version} may not go to {self.environment} yet:"]
        for r in self.unmet:
            lines.append(f"  {r.line()}" + (f" — {r.remedy}" if r.remedy else ""))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "environment": self.environment,
            "allowed": self.allowed,
            "gates": [r.to_json() for r in self.results],
        }


def decide(
    environment: str,
    rules: Rules,
    facts: Facts,
    requester: str,
    now: datetime,
    override: Override | None = None,
) -> Decision:
    """Every gate of `environment` for `facts.release`, asked by `requester` at `now`."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    v = facts.release.version
    results: list[GateResult] = []
    if rules.after is not None:
        live = _live_spans(facts, rules.after, now)
        results.append(_after(v, rules.after, facts, live))
        if rules.soak > 0:
            results.append(_soak(v, rules, live, now))
    results.extend(_check(v, name, facts) for name in rules.checks)
    results.extend(_rejections(v, environment, facts))
    if rules.approvals > 0:
        results.append(_approvals(v, environment, rules, facts, requester))
    if rules.freeze:
        results.append(_freeze(rules, now, override))
    if rules.require_tag:
        results.append(_tag(facts.release))
    return Decision(v, environment, tuple(results))


@dataclass(frozen=True)
class _Span:
    """One stretch during which the release was live in the `after` environment."""

    deployment: DeploymentFact
    start: datetime
    end: datetime | None  # None: still live
    replaced_by: DeploymentFact | None  # the deployment that ended it


def _went_live(dep: DeploymentFact) -> bool:
    # "rolled_back" deployments went live first; a stop takes everything down.
    return dep.kind != "stop" and dep.outcome in ("succeeded", "rolled_back")


def _live_spans(facts: Facts, env: str, now: datetime) -> list[_Span]:
    deps = sorted((d for d in facts.deployments if d.environment == env), key=lambda d: d.id)
    spans: list[_Span] = []
    for index, dep in enumerate(deps):
        if dep.version != facts.release.version or not _went_live(dep):
            continue
        start = dep.finished_at or dep.started_at
        end: datetime | None = None
        replaced_by: DeploymentFact | None = None
        for later in deps[index + 1 :]:
            if later.kind == "stop" and later.outcome == "succeeded":
                end = later.finished_at or later.started_at
                break
            if _went_live(later) and later.version != dep.version:
                end, replaced_by = later.finished_at or later.started_at, later
                break
        spans.append(_Span(dep, start, min(end, now) if end else None, replaced_by))
    return spans


def _newer(facts: Facts, version: str, than: str) -> bool:
    mine, theirs = facts.created.get(version), facts.created.get(than)
    return mine is not None and theirs is not None and mine > theirs


def _after(v: str, after: str, facts: Facts, spans: list[_Span]) -> GateResult:
    remedy = f"deploy it with `conveyor deploy {v} --env {after}`"
    good = [s for s in spans if s.deployment.outcome == "succeeded"]
    for span in good:
        by = span.replaced_by
        if by is None or _newer(facts, by.version, v):
            state = "live there" if by is None and span.end is None else "succeeded there"
            if by is not None:
                state = f"succeeded there and {by.version}, a newer release, replaced it"
            return GateResult(
                "after", after, True, f"{v} {state} (deployment #{span.deployment.id})"
            )
    if good:
        by = good[-1].replaced_by
        assert by is not None
        detail = f"{v} was replaced there by the older {by.version} (deployment #{by.id})"
        return GateResult("after", after, False, detail, remedy)
    if spans:
        detail = f"{v} was rolled back there (deployment #{spans[-1].deployment.id})"
        return GateResult("after", after, False, detail, remedy + " once it is fixed")
    return GateResult("after", after, False, f"{v} has not succeeded there", remedy)


def _soak(v: str, rules: Rules, spans: list[_Span], now: datetime) -> GateResult:
    after, soak = rules.after, rules.soak
    need = format_duration(soak)
    good = [s for s in spans if s.deployment.outcome == "succeeded"]
    if not good:
        return GateResult(
            "soak",
            "soak",
            False,
            f"{v} has not gone live in {after}",
            f"deploy it to {after} and let it run {need}",
        )
    best = max(good, key=lambda s: (s.end or now) - s.start)
    lived = ((best.end or now) - best.start).total_seconds()
    if lived >= soak:
        return GateResult("soak", "soak", True, f"{v} was live in {after} for {_took(lived)}")
    if best.end is None:
        until = best.start + timedelta(seconds=soak)
        return GateResult(
            "soak",
            "soak",
            False,
            f"{v} has been live in {after} for {_took(lived)} of {need}",
            f"wait {_took(soak - lived)} (until {_at(until, rules)})",
        )
    by = best.replaced_by.version if best.replaced_by else "a stop"
    return GateResult(
        "soak",
        "soak",
        False,
        f"{v} was live in {after} for {_took(lived)} of {need} before {by} replaced it",
        f"deploy it to {after} again and let it run {need}",
    )


def _took(seconds: float) -> str:
    # Whole seconds: "12m3s", not "12m3.482s".
    return format_duration(max(0, int(seconds)))


def _at(when: datetime, rules: Rules) -> str:
    return when.astimezone(rules.tz).strftime("%Y-%m-%d %H:%M") + f" {rules.timezone}"


def _check(v: str, name: str, facts: Facts) -> GateResult:
    label = f"check {name}"
    results = [c for c in facts.checks if c.name == name and c.version == v]
    run = f"`conveyor check run {name} --release {v}`"
    if not results:
        return GateResult(
            "check",
            label,
            False,
            f"no result for {v}",
            f"run {run}, or record CI's with `conveyor check record {name} --release {v} --passed`",
        )
    last = max(results, key=lambda c: c.at)
    by = f" by {last.actor}" if last.actor else ""
    where = f" ({last.url})" if last.url else ""
    if last.passed:
        return GateResult("check", label, True, f"passed for {v}{by}{where}")
    return GateResult(
        "check",
        label,
        False,
        f"failed for {v}{by}{where}",
        f"fix it and run {run} again (a release is immutable: a fix is a new release)",
    )


def _rejections(v: str, env: str, facts: Facts) -> list[GateResult]:
    found = [
        a
        for a in facts.approvals
        if a.version == v and a.environment == env and a.decision == "reject" and not a.withdrawn
    ]
    return [
        GateResult(
            "rejected",
            "rejected",
            False,
            f"{a.actor} rejected {v} for {env}" + (f": {a.comment}" if a.comment else ""),
            f"it blocks until {a.actor} (or an admin) withdraws it with "
            f"`conveyor reject {v} --env {env} --withdraw`",
        )
        for a in sorted(found, key=lambda a: a.at)
    ]


def _approvals(v: str, env: str, rules: Rules, facts: Facts, requester: str) -> GateResult:
    used_at = [
        d.started_at
        for d in facts.deployments
        if d.environment == env and d.version == v and d.kind == "deploy" and _went_live(d)
    ]
    newer_approved = [
        a.at
        for a in facts.approvals
        if a.environment == env
        and a.decision == "approve"
        and not a.withdrawn
        and _newer(facts, a.version, v)
    ]
    valid: dict[str, ApprovalFact] = {}
    for a in sorted(facts.approvals, key=lambda a: a.at):
        if a.version != v or a.environment != env or a.decision != "approve" or a.withdrawn:
            continue
        # Void once the release went live there, or once a newer release was approved.
        if any(at >= a.at for at in used_at) or any(at >= a.at for at in newer_approved):
            continue
        valid.setdefault(a.actor, a)
    counted: list[str] = []
    notes: list[str] = []
    for actor in valid:
        if actor == requester:
            notes.append(f"{actor} asked for this deploy and cannot approve it")
        elif rules.approvers and actor not in rules.approvers:
            notes.append(f"{actor} approved but is not one of the approvers")
        else:
            counted.append(actor)
    need = rules.approvals
    said = [f"{', '.join(counted)} approved"] if counted else []
    detail = f"{len(counted)} of {need}"
    if said or notes:
        detail += " — " + "; ".join(said + notes)
    if len(counted) >= need:
        return GateResult("approvals", "approvals", True, detail)
    missing = need - len(counted)
    others = [a for a in rules.approvers if a not in counted and a != requester]
    who = f" from {', '.join(others)}" if others else ""
    more = f"{missing} more approval{'s' if missing > 1 else ''}{who}"
    return GateResult(
        "approvals",
        "approvals",
        False,
        detail,
        f"{more}: `conveyor approve {v} --env {env}` (not by whoever deploys)",
    )


def _freeze(rules: Rules, now: datetime, override: Override | None) -> GateResult:
    found = freeze_in_force(rules.freeze, now, rules.tz)
    if found is None:
        return GateResult("freeze", "freeze", True, "no freeze window is in force")
    window, ends = found
    detail = f'"{window.text}" is in force until {_at(ends, rules)}'
    if override is not None:
        if override.user in rules.admins:
            return GateResult(
                "freeze",
                "freeze",
                True,
                f"{detail}; overridden by {override.user}: {override.reason}",
            )
        admins = ", ".join(rules.admins) if rules.admins else "nobody: [access] admins is empty"
        return GateResult(
            "freeze",
            "freeze",
            False,
            f"{detail}; {override.user} may not override it",
            f"wait until then, or ask an admin ({admins}) to deploy with --override-freeze",
        )
    return GateResult(
        "freeze",
        "freeze",
        False,
        detail,
        'wait until then, or an admin deploys with --override-freeze --reason "..."',
    )


def _tag(release: ReleaseFact) -> GateResult:
    v = release.version
    if release.tags:
        return GateResult("require_tag", "tag", True, f"{v} is tagged {', '.join(release.tags)}")
    if release.commit is None:
        detail = f"{v} was not created from a git commit"
        remedy = "create the release inside a git work tree, on a tagged commit"
    else:
        detail = f"no git tag pointed at {release.commit[:12]} when {v} was created"
        remedy = (
            f"tag the commit (`git tag <name> {release.commit[:12]}`) and create a new release "
            "from it"
        )
    return GateResult("require_tag", "tag", False, detail, remedy)


def check_order(environments: Sequence[tuple[str, str | None]]) -> list[str]:
    """Environments whose `after` chain comes back to themselves (nothing could ever go there)."""
    after = dict(environments)
    looped: list[str] = []
    for name in after:
        seen = {name}
        current = after[name]
        while current is not None and current in after and current not in seen:
            seen.add(current)
            current = after[current]
        if current == name:
            looped.append(name)
    return looped
