"""How the dashboard shapes the API's read models: traffic shares, the step timeline, checks
with their thresholds, and ages (pure functions over plain dicts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor.web.reads import _checks, _timeline, _traffic, progress
from conveyor.web.render import age

PLAN = {
    "state": "plan",
    "data": {"steps": [{"weight": 30, "pause": "manual"}, {"weight": 100, "pause": None}]},
}


def deployment(outcome: str, *states: str, desired: int | None = None) -> dict[str, Any]:
    events = [PLAN, *({"state": s, "data": {}, "service": "web"} for s in states)]
    return {
        "version": "v2",
        "outcome": outcome,
        "events": events,
        "steps": [{"service": "web"}],
        "traffic": {"desired": desired, "actual": {}},
    }


def test_a_canary_step_shows_the_router_split_by_version() -> None:
    data = deployment("in_progress", "step", desired=30)
    data["traffic"]["actual"] = {"web": {"blue": 70, "green": 30}}
    colors = {("web", "blue"): "v1", ("web", "green"): "v2"}
    [route] = _traffic(data, "dev", "step", {}, colors)
    assert route == {
        "service": "web",
        "desired": {"new": 30, "old": 70},
        "actual": {"new": 30, "old": 70},
    }


@pytest.mark.parametrize(
    ("phase", "share"),
    [("switching", 100), ("succeeded", 100), ("rolled_back", 0), ("aborted", 0)],
)
def test_finished_or_switching_deployments_show_where_traffic_ends(phase: str, share: int) -> None:
    [route] = _traffic(deployment("succeeded"), "dev", phase, None, {})
    assert route["desired"]["new"] == share and route["actual"]["new"] == share


def test_a_deployment_that_ended_after_the_agent_was_asked_shows_where_its_traffic_ended() -> None:
    # The agent's status was read while it ran (or already without it); its record, read
    # after, says it succeeded: the page shows the outcome's traffic, not a stale phase.
    for current in ({"id": 7, "phase": "baking"}, {}):
        running, phase = progress("succeeded", current, 7)
        assert not running and phase == "succeeded"
        [route] = _traffic(deployment("succeeded"), "dev", phase, None, {})
        assert route["desired"]["new"] == 100 and route["actual"]["new"] == 100
    assert progress("in_progress", {"id": 7, "phase": "step"}, 7) == (True, "step")
    assert progress("in_progress", {"id": 6, "phase": "step"}, 7) == (False, "in_progress")


def test_a_deployment_that_moved_no_traffic_yet_shows_none_to_the_new_version() -> None:
    [route] = _traffic(deployment("in_progress"), "dev", "starting", {}, {})
    assert route["desired"] == {"new": 0, "old": 100}


def test_the_timeline_marks_done_current_and_pending_steps() -> None:
    running = _timeline(deployment("in_progress", "step"))
    assert [s["state"] for s in running] == ["current", "pending"]
    assert running[0]["label"] == "30% of traffic, pause manual"
    done = _timeline(deployment("succeeded", "step", "step"))
    assert [s["state"] for s in done] == ["done", "done"]


def test_each_check_has_its_threshold_and_its_own_measurements() -> None:
    analysis = {
        "checks": [
            {"check": "error_rate", "metric": "error_rate", "max": 0.01, "min": None},
            {"check": "p99", "metric": "latency_p99_ms", "max": 200, "min": None},
        ],
        "measurements": [{"check": "error_rate", "verdict": "pass", "value": 0.002, "at": 1.0}],
    }
    rate, p99 = _checks(analysis)
    assert rate["threshold"] == "max 0.01"
    assert [m["value"] for m in rate["measurements"]] == [0.002]
    assert p99["measurements"] == []


def test_age_is_said_in_the_largest_unit() -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert age((now - timedelta(seconds=5)).isoformat(), now) == "5s ago"
    assert age(now - timedelta(minutes=3, seconds=59), now) == "3m ago"
    assert age(now - timedelta(days=2, hours=1), now) == "2d ago"
    assert age(None, now) == ""
    assert age(now + timedelta(seconds=3), now) == "just now"  # clocks a little apart
