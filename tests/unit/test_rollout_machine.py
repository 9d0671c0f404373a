"""Properties of the pure rollout state machine, driven by random event sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.core import rollout as r

PLANS = (
    r.ServicePlan("web", "web", "blue", "green", healthy_threshold=2, start_timeout=10.0),
    r.ServicePlan("api", "web", None, "blue", healthy_threshold=3, start_timeout=10.0),
    r.ServicePlan("jobs", "worker", "green", "blue", healthy_threshold=1, start_timeout=10.0),
)
NAMES = [p.name for p in PLANS]


def events() -> st.SearchStrategy[list[r.Event]]:
    t = st.floats(min_value=0, max_value=20, allow_nan=False)
    one = st.one_of(
        st.builds(r.Probe, st.sampled_from(NAMES), st.booleans(), st.just("HTTP 200"), t),
        st.builds(r.Crash, st.sampled_from(NAMES), st.just("exited with code 1"), t),
        st.builds(r.Tick, t),
        st.builds(r.Switched, t),
        st.builds(r.SwitchFailed, st.just("bind failed"), t),
        st.builds(r.Drained, t),
        st.builds(r.Abort, st.just("user"), t),
    )
    return st.lists(one, max_size=60)


def run(seq: list[r.Event]) -> tuple[r.Rollout, list[tuple[r.Rollout, r.Action]]]:
    state, actions = r.begin(PLANS, now=0.0)
    log = [(state, a) for a in actions]
    for ev in seq:
        before = state
        state, actions = r.step(state, ev)
        log.extend((before, a) for a in actions)
    return state, log


@settings(max_examples=400)
@given(events())
def test_traffic_moves_only_to_colors_that_passed_their_threshold_in_a_row(
    seq: list[r.Event],
) -> None:
    state, actions = r.begin(PLANS, now=0.0)
    streak = dict.fromkeys(NAMES, 0)
    healthy: set[str] = set()
    for ev in seq:
        if isinstance(ev, r.Probe) and state.phase is r.Phase.STARTING:
            streak[ev.service] = streak[ev.service] + 1 if ev.ok else 0
            plan = next(p for p in PLANS if p.name == ev.service)
            if streak[ev.service] >= plan.healthy_threshold:
                healthy.add(ev.service)
        state, actions = r.step(state, ev)
        for a in actions:
            if isinstance(a, r.SwitchTraffic):
                assert healthy == set(NAMES)
                assert {s for s, _ in a.routes} == {"web", "api"}
                for service, color in a.routes:
                    assert color == next(p.new_color for p in PLANS if p.name == service)


@settings(max_examples=400)
@given(events())
def test_a_failure_stops_every_new_color_and_never_touches_the_old(seq: list[r.Event]) -> None:
    state, log = run(seq)
    if state.phase is r.Phase.FAILED:
        stopped = {(a.service, a.color) for _, a in log if isinstance(a, r.StopColor)}
        assert {(p.name, p.new_color) for p in PLANS} <= stopped
        assert all((p.name, p.old_color) not in stopped for p in PLANS if p.kind == "web"), (
            "an old web color was stopped by a failed rollout"
        )
        finishes = [a for _, a in log if isinstance(a, r.Finish)]
        assert len(finishes) == 1 and finishes[0].outcome == "failed"


@settings(max_examples=400)
@given(events())
def test_old_colors_are_only_stopped_after_the_switch_and_never_web_ones(
    seq: list[r.Event],
) -> None:
    _, log = run(seq)
    web_old = {(p.name, p.old_color) for p in PLANS if p.kind == "web"}
    for before, a in log:
        if isinstance(a, r.StopColor):
            # Old web colors stay up as standby: only the engine's standby timer stops them.
            assert (a.service, a.color) not in web_old
        if isinstance(a, r.StopColor) and a.reason == "replaced by the new version":
            assert before.phase is r.Phase.SWITCHING
            assert (a.service, a.color) == ("jobs", "green")


@settings(max_examples=400)
@given(events())
def test_terminal_states_absorb_everything_and_finish_once(seq: list[r.Event]) -> None:
    state, log = run(seq)
    finishes = [a for _, a in log if isinstance(a, r.Finish)]
    assert len(finishes) == (1 if state.terminal else 0)
    after, actions = r.step(state, r.Tick(99.0))
    if state.terminal:
        assert after == state and actions == []


def happy_path() -> list[r.Event]:
    return [
        r.Probe("web", True, "HTTP 200", 1),
        r.Probe("api", True, "HTTP 200", 1),
        r.Probe("jobs", True, "running", 1),
        r.Probe("web", True, "HTTP 200", 2),
        r.Probe("api", True, "HTTP 200", 2),
        r.Probe("api", True, "HTTP 200", 3),
        r.Switched(3.1),
        r.Drained(3.5),
    ]


def test_happy_path_switches_drains_and_succeeds() -> None:
    state, log = run(happy_path())
    assert state.phase is r.Phase.SUCCEEDED
    kinds = [
        type(a).__name__
        for _, a in log
        if not isinstance(a, (r.Record, r.Announce, r.Analyze, r.Preview))
    ]
    assert kinds == [
        "StartColor",
        "StartColor",
        "StartColor",
        "SwitchTraffic",
        "StopColor",
        "Drain",
        "Finish",
    ]
    drain = next(a for _, a in log if isinstance(a, r.Drain))
    assert drain.colors == (("web", "blue"),)  # api had no old color; jobs is a worker
    events = [a.event for _, a in log if isinstance(a, r.Announce)]
    assert events == ["started", "switched", "succeeded"]


def test_a_failed_probe_resets_the_streak() -> None:
    state, _ = r.begin(PLANS[:1], now=0)
    for ok in (True, False, True):
        state, actions = r.step(state, r.Probe("web", ok, "x", 1))
        assert not any(isinstance(a, r.SwitchTraffic) for a in actions)
    state, actions = r.step(state, r.Probe("web", True, "x", 1))
    assert any(isinstance(a, r.SwitchTraffic) for a in actions)


def test_start_timeout_names_the_service_and_the_last_check() -> None:
    state, _ = r.begin(PLANS[:1], now=0)
    state, _ = r.step(state, r.Probe("web", False, "HTTP 503", 1))
    state, actions = r.step(state, r.Tick(9.9))
    assert state.phase is r.Phase.STARTING and actions == []
    state, actions = r.step(state, r.Tick(10.0))
    assert state.phase is r.Phase.FAILED
    assert state.reason == "web (green) was not healthy within 10s (last check: HTTP 503)"


def test_switch_failure_fails_the_rollout() -> None:
    state, _ = r.begin(PLANS[:1], now=0)
    state, _ = r.step(state, r.Probe("web", True, "ok", 1))
    state, _ = r.step(state, r.Probe("web", True, "ok", 1))
    assert state.phase is r.Phase.SWITCHING
    state, actions = r.step(state, r.SwitchFailed("address in use", 2))
    assert state.phase is r.Phase.FAILED
    assert r.StopColor("web", "green", "deployment failed") in actions
