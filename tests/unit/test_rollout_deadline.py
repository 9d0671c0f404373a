"""Every wait ends: progress_deadline and on_deadline, the blue/green "live, unverified" ending,
and a wait said once (the machine alone, no I/O)."""

from __future__ import annotations

from typing import Literal

from conveyor.core import rollout as r

WEB = r.ServicePlan("web", "web", "blue", "green", 1, 10.0)
CHECK = r.CheckPlan("error_rate", failure_limit=2)
FEW = r.Measured("error_rate", "inconclusive", "error_rate: not enough requests: 3 < 50", 0.0)


def baking(
    on_inconclusive: Literal["pass", "fail", "wait"],
    on_deadline: Literal["abort", "promote"] = "abort",
) -> r.Rollout:
    opts = r.Options(
        bake=2.0,
        on_inconclusive=on_inconclusive,
        checks=(CHECK,),
        progress_deadline=10.0,
        on_deadline=on_deadline,
        promote_hint="conveyor promote --env dev",
    )
    state, _ = r.begin((WEB,), 0.0, opts)
    for event in (r.Probe("web", True, "ok", 0.5), r.Switched(0.6), r.Drained(0.7), FEW):
        state, _ = r.step(state, event)
    assert state.phase is r.Phase.BAKING
    return state


def records(actions: list[r.Action], state: str) -> list[str]:
    return [a.reason for a in actions if isinstance(a, r.Record) and a.state == state]


def test_bluegreen_passing_inconclusive_analysis_ends_live_unverified() -> None:
    state, actions = r.step(baking("pass"), r.Tick(3.0))
    assert state.phase is r.Phase.SUCCEEDED
    assert state.reason == "live, unverified: error_rate: not enough requests: 3 < 50"
    finish = [a for a in actions if isinstance(a, r.Finish)]
    assert finish == [r.Finish("succeeded", state.reason)]
    assert next(a for a in actions if isinstance(a, r.Announce)).reason == state.reason


def test_a_wait_is_said_once_with_the_way_on_and_ends_at_the_deadline() -> None:
    state, actions = r.step(baking("wait"), r.Tick(3.0))
    waiting = (
        "waiting for traffic: error_rate: not enough requests: 3 < 50; send traffic, or run "
        "`conveyor promote --env dev` to accept"
    )
    assert (state.phase, state.waiting, records(actions, "waiting")) == (
        r.Phase.BAKING,
        waiting,
        [waiting],
    )
    # More data that is still too little: the sentence follows it, but it is not said again.
    more = r.Measured("error_rate", "inconclusive", "error_rate: not enough requests: 9 < 50", 4)
    state, actions = r.step(state, more)
    state, again = r.step(state, r.Tick(5.0))
    assert "9 < 50" in state.waiting and records(actions + again, "waiting") == []
    # Just before the deadline (10s after the wait began at 3.0): still waiting.
    state, _ = r.step(state, r.Tick(12.9))
    assert state.phase is r.Phase.BAKING
    state, actions = r.step(state, r.Tick(13.0))
    assert state.phase is r.Phase.ROLLING_BACK
    assert state.reason.startswith("aborted: progress deadline (10s) passed while waiting for")
    assert any(isinstance(a, r.SwitchBack) for a in actions)
    state, _ = r.step(state, r.SwitchedBack(13.1))
    assert state.phase is r.Phase.ABORTED


def test_on_deadline_promote_goes_on() -> None:
    state, _ = r.step(baking("wait", on_deadline="promote"), r.Tick(3.0))
    state, _ = r.step(state, r.Tick(13.0))
    assert state.phase is r.Phase.SUCCEEDED
    assert state.reason.startswith("live, unverified: progress deadline (10s) passed")


def test_data_arriving_before_the_deadline_ends_the_wait() -> None:
    state, _ = r.step(baking("wait"), r.Tick(3.0))
    state, _ = r.step(state, r.Measured("error_rate", "pass", "error_rate 0%", 5.0))
    assert state.phase is r.Phase.SUCCEEDED and state.reason == "bake passed"


def test_a_manual_gate_ends_at_the_deadline_before_any_traffic_moved() -> None:
    opts = r.Options(auto_promote=False, progress_deadline=30.0)
    state, _ = r.begin((WEB,), 0.0, opts)
    state, _ = r.step(state, r.Probe("web", True, "ok", 1.0))
    assert state.phase is r.Phase.AWAITING_PROMOTION
    assert state.waiting == "manual promotion: run `conveyor promote`"
    state, actions = r.step(state, r.Tick(31.0))
    assert state.phase is r.Phase.ABORTED
    assert state.reason.startswith("aborted: progress deadline (30s) passed while manual promotion")
    assert r.StopColor("web", "green", "deployment failed") in actions
    assert not any(isinstance(a, (r.SwitchTraffic, r.SwitchBack)) for a in actions)


def test_a_manual_canary_step_ends_at_the_deadline() -> None:
    steps = (r.Step(10, "manual"), r.Step(100))
    for on_deadline, phase in (("abort", r.Phase.ROLLING_BACK), ("promote", r.Phase.SWITCHING)):
        opts = r.Options("canary", steps, progress_deadline=60.0, on_deadline=on_deadline)  # type: ignore[arg-type]
        state, _ = r.begin((WEB,), 0.0, opts)
        state, _ = r.step(state, r.Probe("web", True, "ok", 1.0))
        state, _ = r.step(state, r.WeightsSet(1.1))
        assert state.waiting.startswith("manual pause")
        state, _ = r.step(state, r.Tick(61.2))
        assert state.phase is phase, on_deadline
