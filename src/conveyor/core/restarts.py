"""When to restart a crashed color, and when its crashes are a crash loop (pure: `now` is passed in).

Restarts back off exponentially, 1 s, 2 s, 4 s, ... up to 1 min: a one-off crash is back within a
second, while a release that cannot run does not burn the machine (and fill its logs) restarting.
A color that stayed up for 10 minutes starts again from 1 s.

What counts as *crash-looping*: at least 3 restarts within the last 10 minutes. Rare crashes of a
long-running app are not a loop (they age out of the window); three in a few minutes are, however
far the back-off has grown. It ends by itself once the color stays up for the window.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from conveyor.core.durations import format_duration


@dataclass(frozen=True)
class RestartPolicy:
    first: float = 1.0  # the wait before the first restart
    cap: float = 60.0  # the longest wait
    reset_after: float = 600.0  # up this long: the next crash waits `first` again
    loop_restarts: int = 3  # this many restarts...
    loop_window: float = 600.0  # ...within this long: crash-looping

    def delay(self, streak: int) -> float:
        """The wait before a restart, after `streak` restarts in a row."""
        return min(self.cap, self.first * float(2 ** min(streak, 32)))


@dataclass(frozen=True)
class Exit:
    at: float  # monotonic, like `now`
    detail: str  # "exited with code 3"
    wall: float  # seconds since the epoch, for people


@dataclass(frozen=True)
class Restarts:
    """One color's exits and restarts, as the supervisor saw them."""

    up_since: float = float("-inf")  # when its current run began (-inf: before we watched)
    streak: int = 0  # restarts since it last stayed up `reset_after`
    restarts: tuple[float, ...] = ()  # when it was restarted (the last `loop_window` only)
    delays: tuple[float, ...] = ()  # the wait before each of those restarts
    total: int = 0  # every restart
    last_exit: Exit | None = None
    due: float | None = None  # when the next restart is due; None: it runs (or was never down)


def exited(r: Restarts, ex: Exit, policy: RestartPolicy) -> Restarts:
    """It ended: the restart is due after the back-off (from 1 s again if it ran long enough)."""
    streak = 0 if ex.at - r.up_since >= policy.reset_after else r.streak
    return replace(r, streak=streak, last_exit=ex, due=ex.at + policy.delay(streak))


def restarted(r: Restarts, now: float, policy: RestartPolicy) -> Restarts:
    """It was started again at `now` (call it when the due restart is made)."""
    keep = [i for i, t in enumerate(r.restarts) if now - t < policy.loop_window]
    waited = policy.delay(r.streak)
    return replace(
        r,
        up_since=now,
        streak=r.streak + 1,
        restarts=(*(r.restarts[i] for i in keep), now),
        delays=(*(r.delays[i] for i in keep), waited),
        total=r.total + 1,
        due=None,
    )


def recent(r: Restarts, now: float, policy: RestartPolicy) -> tuple[float, ...]:
    """The restarts within the last `loop_window`."""
    return tuple(t for t in r.restarts if now - t < policy.loop_window)


def crash_looping(r: Restarts, now: float, policy: RestartPolicy) -> bool:
    return len(recent(r, now, policy)) >= policy.loop_restarts


def describe(r: Restarts, now: float, policy: RestartPolicy) -> str:
    """ "crash-looping — 5 restarts in 2m", "1 restart", "2 restarts in 40s"; "" if none lately.

    The span runs from the first of the recent restarts to the latest exit or restart.
    """
    times = recent(r, now, policy)
    if not times:
        return ""
    count = f"{len(times)} restart{'s' if len(times) > 1 else ''}"
    end = max(times[-1], r.last_exit.at if r.last_exit is not None else times[-1])
    if len(times) > 1 or end > times[0]:
        count += f" in {format_duration(max(1, round(end - times[0])))}"
    return f"crash-looping — {count}" if crash_looping(r, now, policy) else count
