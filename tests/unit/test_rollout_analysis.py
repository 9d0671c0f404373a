"""The rollout machine with smoke tests, manual gates, canary steps, analysis and rollback."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.core import rollout as r

WEB = r.ServicePlan("web", "web", "blue", "green", 2, 10.0, unhealthy_threshold=3)
JOBS = r.ServicePlan("jobs", "worker", "green", "blue", 1, 10.0)
CHECK = r.CheckPlan("error_rate", failure_limit=2)
STEPS = (r.Step(10, 5.0), r.Step(50, "manual"), r.Step(100))


def options() -> st.SearchStrategy[r.Options]:
    return st.builds(
        r.Options,
        strategy=st.sampled_from(["bluegreen", "canary"]),
        steps=st.just(STEPS),
        bake=st.sampled_from([0.0, 3.0]),
        auto_promote=st.booleans(),
        on_inconclusive=st.sampled_from(["pass", "fail", "wait"]),
        smoke=st.booleans(),
        checks=st.just((CHECK,)),
        progress_deadline=st.sampled_from([600.0, 4.0]),
        on_deadline=st.sampled_from(["abort", "promote"]),
    )


def events() -> st.SearchStrategy[list[r.Event]]:
    t = st.floats(min_value=0, max_value=30, allow_nan=False)
    one = st.one_of(
        st.builds(r.Probe, st.sampled_from(["web", "jobs"]), st.booleans(), st.just("x"), t),
        st.builds(r.Crash, st.sampled_from(["web", "jobs"]), st.just("exit 1"), t),
        st.builds(r.Tick, t),
        st.builds(r.Switched, t),
        st.builds(r.SwitchFailed, st.just("bind"), t),
        st.builds(r.WeightsSet, t),
        st.builds(r.Drained, t),
        st.builds(r.SwitchedBack, t),
        st.builds(r.HookDone, st.just("smoke"), st.booleans(), st.just("exit 1"), t),
        st.builds(
            r.Measured,
            st.just("error_rate"),
            st.sampled_from(["pass", "fail", "inconclusive"]),
            st.just("error_rate 2%"),
            t,
        ),
        st.builds(r.Promote, st.booleans(), t),
        st.builds(r.Abort, st.just("by hand"), t),
    )
    return st.lists(one, max_size=80)


def drive(
    opts: r.Options, seq: list[r.Event]
) -> tuple[r.Rollout, list[tuple[r.Rollout, r.Action, r.Event | None]]]:
    state, actions = r.begin((WEB, JOBS), 0.0, opts)
    log: list[tuple[r.Rollout, r.Action, r.Event | None]] = [(state, a, None) for a in actions]
    for ev in seq:
        before = state
        state, actions = r.step(state, ev)
        log.extend((before, a, ev) for a in actions)
    return state, log


@settings(max_examples=600)
@given(options(), events())
def test_traffic_moves_only_after_health_and_smoke(opts: r.Options, seq: list[r.Event]) -> None:
    state, actions = r.begin((WEB, JOBS), 0.0, opts)
    streak = {"web": 0, "jobs": 0}
    healthy: set[str] = set()
    smoke_passed = False
    for ev in seq:
        if isinstance(ev, r.Probe) and state.phase is r.Phase.STARTING:
            streak[ev.service] = streak[ev.service] + 1 if ev.ok else 0
            threshold = WEB.healthy_threshold if ev.service == "web" else JOBS.healthy_threshold
            if streak[ev.service] >= threshold:
                healthy.add(ev.service)
        if isinstance(ev, r.HookDone) and state.phase is r.Phase.SMOKE and ev.ok:
            smoke_passed = True
        state, actions = r.step(state, ev)
        for a in actions:
            if isinstance(a, (r.SwitchTraffic, r.SetWeights, r.Preview)) and not (
                isinstance(a, r.Preview) and not a.on
            ):
                assert healthy == {"web", "jobs"}
                assert smoke_passed or not opts.smoke
            if isinstance(a, r.SetWeights):
                assert opts.strategy == "canary"
                assert all(0 < w < 100 for *_, w in a.routes)


@settings(max_examples=600)
@given(options(), events())
def test_every_rollout_ends_once_and_a_rollback_ends_on_the_old_colors(
    opts: r.Options, seq: list[r.Event]
) -> None:
    state, log = drive(opts, seq)
    finishes = [a for _, a, _ in log if isinstance(a, r.Finish)]
    assert len(finishes) == (1 if state.terminal else 0)
    routing = [a for _, a, _ in log if isinstance(a, (r.SwitchTraffic, r.SetWeights, r.SwitchBack))]
    if state.phase is r.Phase.ROLLED_BACK or (state.phase is r.Phase.ABORTED and routing):
        # The last word on routing sends everything back to the colors that served before.
        assert isinstance(routing[-1], r.SwitchBack)
        assert routing[-1].routes == (("web", "blue"),)
        stopped = {(a.service, a.color) for _, a, _ in log if isinstance(a, r.StopColor)}
        assert ("web", "green") in stopped
    if state.phase is r.Phase.SUCCEEDED:
        assert routing and isinstance(routing[-1], r.SwitchTraffic)
    for _, a, _ in log:
        if isinstance(a, r.StopColor):
            assert (a.service, a.color) != ("web", "blue"), "the old web color is the standby"


@settings(max_examples=600)
@given(options(), events())
def test_analysis_failure_needs_failure_limit_failures_in_a_row(
    opts: r.Options, seq: list[r.Event]
) -> None:
    _state, log = drive(opts, seq)
    for before, a, ev in log:
        if isinstance(a, r.SwitchBack) and isinstance(ev, r.Measured):
            assert ev.verdict == "fail"
            assert before.checks[0].failures + 1 >= CHECK.failure_limit


@settings(max_examples=300)
@given(options(), events())
def test_analysis_runs_only_while_traffic_is_on_the_new_color(
    opts: r.Options, seq: list[r.Event]
) -> None:
    _, log = drive(opts, seq)
    on = False
    for before, a, _ in log:
        if isinstance(a, r.Analyze):
            if a.on:
                assert not on
                assert before.phase in (
                    r.Phase.DRAINING,
                    r.Phase.STEP,
                    r.Phase.AWAITING_PROMOTION,
                    r.Phase.STARTING,
                    r.Phase.SMOKE,
                    r.Phase.SWITCHING,
                )
            on = a.on


def healthy_events(now: float = 1.0) -> list[r.Event]:
    return [
        r.Probe("web", True, "ok", now),
        r.Probe("web", True, "ok", now),
        r.Probe("jobs", True, "ok", now),
    ]


def test_canary_walks_its_steps_and_waits_for_a_manual_promote() -> None:
    opts = r.Options("canary", STEPS, bake=0.0, checks=(CHECK,))
    state, _log = drive(opts, [*healthy_events(), r.WeightsSet(1.1)])
    assert state.phase is r.Phase.STEP and state.weight == 10
    state, actions = r.step(state, r.Measured("error_rate", "pass", "error_rate 0%", 2))
    state, actions = r.step(state, r.Tick(6.5))
    assert state.weight == 50
    assert r.SetWeights((("web", "blue", "green", 50),)) in actions
    state, actions = r.step(state, r.Tick(100))
    assert state.weight == 50 and "manual pause" in state.waiting
    state, actions = r.step(state, r.Promote(False, 101))
    assert state.phase is r.Phase.SWITCHING
    assert r.SwitchTraffic((("web", "green"),)) in actions


def test_canary_failure_at_a_step_switches_back() -> None:
    opts = r.Options("canary", STEPS, bake=0.0, checks=(CHECK,))
    state, _ = drive(opts, [*healthy_events(), r.WeightsSet(1.1)])
    state, _ = r.step(state, r.Measured("error_rate", "fail", "error_rate 5% > 1%", 2))
    assert state.phase is r.Phase.STEP
    state, actions = r.step(state, r.Measured("error_rate", "fail", "error_rate 6% > 1%", 3))
    assert state.phase is r.Phase.ROLLING_BACK
    assert r.SwitchBack((("web", "blue"),)) in actions
    state, actions = r.step(state, r.SwitchedBack(3.1))
    assert state.phase is r.Phase.ROLLED_BACK
    assert state.reason == "analysis failed: error_rate 6% > 1% (2 failed measurements in a row)"
    assert r.StopColor("web", "green", "deployment failed") in actions


def test_inconclusive_bake_follows_the_policy() -> None:
    base = [*healthy_events(), r.Switched(1.2), r.Drained(1.3)]
    inconclusive = r.Measured("error_rate", "inconclusive", "error_rate: 3 requests < 50", 2)
    for policy, phase in (
        ("pass", r.Phase.SUCCEEDED),
        ("fail", r.Phase.ROLLING_BACK),
        ("wait", r.Phase.BAKING),
    ):
        opts = r.Options(bake=2.0, on_inconclusive=policy, checks=(CHECK,))  # type: ignore[arg-type]
        state, _ = drive(opts, [*base, inconclusive, r.Tick(3.4)])
        assert state.phase is phase, policy
    opts = r.Options(bake=2.0, on_inconclusive="wait", checks=(CHECK,))
    state, _ = drive(opts, [*base, inconclusive, r.Tick(3.4)])
    assert state.waiting == (
        "waiting for traffic: error_rate: 3 requests < 50; send traffic, or run "
        "`conveyor promote` to accept"
    )
    state, _ = r.step(state, r.Measured("error_rate", "pass", "error_rate 0%", 4))
    assert state.phase is r.Phase.SUCCEEDED


def test_unhealthy_during_bake_rolls_back() -> None:
    opts = r.Options(bake=60.0, checks=(CHECK,))
    state, _ = drive(opts, [*healthy_events(), r.Switched(1.2), r.Drained(1.3)])
    assert state.phase is r.Phase.BAKING
    for i in range(2):
        state, _ = r.step(state, r.Probe("web", False, "HTTP 503", 2 + i))
        assert state.phase is r.Phase.BAKING
    state, _ = r.step(state, r.Probe("web", False, "HTTP 503", 5))
    assert state.phase is r.Phase.ROLLING_BACK
    assert state.reason == "web (green) failed 3 health checks in a row (last: HTTP 503)"


def test_smoke_failure_stops_before_any_traffic() -> None:
    state, log = drive(
        r.Options(smoke=True),
        [*healthy_events(), r.HookDone("smoke", False, "exited with code 1", 2)],
    )
    assert state.phase is r.Phase.FAILED and state.reason == "smoke test failed: exited with code 1"
    assert not any(
        isinstance(a, (r.SwitchTraffic, r.SetWeights, r.Preview)) and getattr(a, "on", True)
        for _, a, _ in log
    )


def test_manual_bluegreen_previews_then_switches_on_promote() -> None:
    state, log = drive(r.Options(auto_promote=False), healthy_events())
    assert state.phase is r.Phase.AWAITING_PROMOTION
    assert any(a == r.Preview(True) for _, a, _ in log)
    state, actions = r.step(state, r.Promote(False, 5))
    assert r.Preview(False) in actions and r.SwitchTraffic((("web", "green"),)) in actions


def test_abort_before_traffic_stops_the_new_colors_and_records_aborted() -> None:
    state, log = drive(r.Options(), [r.Abort("changed my mind", 0.5)])
    assert state.phase is r.Phase.ABORTED
    assert {(a.service, a.color) for _, a, _ in log if isinstance(a, r.StopColor)} == {
        ("web", "green"),
        ("jobs", "blue"),
    }


def test_first_deploy_has_no_canary_and_no_bake() -> None:
    first = r.ServicePlan("web", "web", None, "blue", 1, 10.0)
    opts = r.Options("canary", STEPS, bake=5.0, checks=(CHECK,))
    state, _ = r.begin((first,), 0.0, opts)
    state, actions = r.step(state, r.Probe("web", True, "ok", 1))
    assert r.SwitchTraffic((("web", "blue"),)) in actions
    state, _ = r.step(state, r.Switched(1.1))
    state, _ = r.step(state, r.Drained(1.2))
    assert state.phase is r.Phase.SUCCEEDED
