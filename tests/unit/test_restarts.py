"""The restart back-off and what counts as a crash loop (conveyor.core.restarts), with plain numbers."""

from __future__ import annotations

from conveyor.core.restarts import (
    Exit,
    RestartPolicy,
    Restarts,
    crash_looping,
    describe,
    exited,
    restarted,
)

POLICY = RestartPolicy()


def crash_and_restart(r: Restarts, at: float) -> tuple[Restarts, float]:
    """It dies at `at` and is restarted when due; the record and the wait it got."""
    r = exited(r, Exit(at, "exited with code 3", 1_000_000 + at), POLICY)
    assert r.due is not None
    return restarted(r, r.due, POLICY), r.due - at


def test_back_off_doubles_from_one_second_up_to_a_minute() -> None:
    r, now, waits = Restarts(), 0.0, []
    for _ in range(9):
        r, wait = crash_and_restart(r, now + 0.5)  # up half a second each time
        waits.append(wait)
        now = r.restarts[-1]
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert r.total == 9 and r.delays == tuple(waits)


def test_ten_minutes_up_starts_the_back_off_again() -> None:
    r = Restarts()
    for _ in range(4):
        r, _wait = crash_and_restart(r, (r.restarts or (0.0,))[-1] + 1)
    up = r.restarts[-1]
    _, wait = crash_and_restart(r, up + 599.9)
    assert wait == 16  # still in the streak
    _, wait = crash_and_restart(r, up + 600)
    assert wait == 1


def test_three_restarts_within_ten_minutes_are_a_crash_loop() -> None:
    r, _ = crash_and_restart(Restarts(), 5.0)
    assert describe(r, r.restarts[-1], POLICY) == "1 restart"
    r, _ = crash_and_restart(r, r.restarts[-1] + 2)
    now = r.restarts[-1]
    assert not crash_looping(r, now, POLICY)
    assert describe(r, now, POLICY) == "2 restarts in 4s"  # at 6 and 10
    r, _ = crash_and_restart(r, now + 2)  # restarted at 16
    now = r.restarts[-1]
    assert crash_looping(r, now, POLICY)
    assert describe(r, now, POLICY) == "crash-looping — 3 restarts in 10s"
    # A later crash stretches the span to it.
    down = exited(r, Exit(now + 50, "killed by SIGKILL", 0.0), POLICY)
    assert describe(down, now + 50, POLICY) == "crash-looping — 3 restarts in 1m"
    # Restarts age out of the window: up for ten minutes, it is no loop any more.
    assert crash_looping(r, 6 + 599.9, POLICY)
    assert not crash_looping(r, 6 + 600, POLICY)
    assert describe(r, 16 + 600, POLICY) == ""


def test_old_restarts_leave_the_record_with_their_waits() -> None:
    r, _ = crash_and_restart(Restarts(), 0.0)  # restarted at 1
    r, _ = crash_and_restart(r, 700.0)  # up > 10 min: 1 s again, and the first restart ages out
    assert r.restarts == (701.0,) and r.delays == (1.0,) and r.total == 2


def test_the_restart_is_due_after_the_wait_from_the_exit() -> None:
    r = exited(Restarts(), Exit(12.5, "exited with code 3", 0.0), POLICY)
    assert r.due == 13.5 and r.last_exit is not None and r.last_exit.detail == "exited with code 3"
    assert restarted(r, 13.5, POLICY).due is None
