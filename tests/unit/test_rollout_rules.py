"""The rules that decide a rollback once users see the new version, each pinned by a test that
fails when the rule is broken: a crash switches back, a failing health streak switches back and a
passing probe ends it, a failing measurement streak switches back and a passing one ends it, and a
phase with no conclusive measurement follows `on_inconclusive`.

Each rule is checked against a plain-words reference over random sequences (hypothesis), in every
phase where it applies.
"""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.core import rollout as r

WEB = r.ServicePlan("web", "web", "blue", "green", 2, 10.0, unhealthy_threshold=3)
JOBS = r.ServicePlan("jobs", "worker", "green", "blue", 1, 10.0, unhealthy_threshold=2)
ERRORS = r.CheckPlan("error_rate", failure_limit=2)
LATENCY = r.CheckPlan("latency_p99_ms", failure_limit=3)
# Long pauses and bake: no Tick in these tests ends a phase unless it says so.
STEPS = (r.Step(10, 100.0), r.Step(50, 100.0), r.Step(100))
Verdict = Literal["pass", "fail", "inconclusive"]
TRAFFIC_PHASES = ("switching", "step", "draining", "baking")


def options(phase: str, checks: tuple[r.CheckPlan, ...] = (ERRORS,), **kw: object) -> r.Options:
    strategy = "canary" if phase == "step" else "bluegreen"
    return r.Options(strategy, STEPS, bake=100.0, checks=checks, **kw)  # type: ignore[arg-type]


def reach(
    phase: str, opts: r.Options | None = None, plans: tuple[r.ServicePlan, ...] = (WEB, JOBS)
) -> r.Rollout:
    """A rollout in `phase` (one of TRAFFIC_PHASES), through the events the engine would feed."""
    opts = opts or options(phase)
    state, _ = r.begin(plans, 0.0, opts)
    for plan in plans:
        for _ in range(plan.healthy_threshold):
            state, _ = r.step(state, r.Probe(plan.name, True, "HTTP 200", 1.0))
    if phase in ("draining", "baking"):
        state, _ = r.step(state, r.Switched(1.1))
    if phase == "baking":
        state, _ = r.step(state, r.Drained(1.2))
    assert state.phase == phase, state
    return state


def measured(check: str, verdict: Verdict, now: float = 2.0) -> r.Measured:
    return r.Measured(check, verdict, f"{check} {verdict}", now)


# --- a crash of a new color after the switch ----------------------------------------------------


@pytest.mark.parametrize("phase", TRAFFIC_PHASES)
@pytest.mark.parametrize("service", ["web", "jobs"])
def test_a_crash_after_traffic_moved_switches_back(phase: str, service: str) -> None:
    state = reach(phase)
    new = "green" if service == "web" else "blue"
    state, actions = r.step(state, r.Crash(service, "exited with code 3", 5.0))
    assert state.phase is r.Phase.ROLLING_BACK
    assert state.reason == f"{service} ({new}) crashed: exited with code 3"
    assert actions == [
        r.Analyze(False),
        r.Record("rolling_back", state.reason),
        r.SwitchBack((("web", "blue"),)),
    ]
    state, actions = r.step(state, r.SwitchedBack(5.1))
    assert state.phase is r.Phase.ROLLED_BACK
    assert r.StopColor("web", "green", "deployment failed") in actions
    assert r.Finish("rolled_back", f"{service} ({new}) crashed: exited with code 3") in actions


def test_a_crash_after_the_switch_of_a_first_deployment_fails_but_stops_nothing() -> None:
    first = r.ServicePlan("web", "web", None, "blue", 1, 10.0)
    state = reach("draining", r.Options(), plans=(first,))
    state, actions = r.step(state, r.Crash("web", "killed by SIGKILL", 2.0))
    assert state.phase is r.Phase.FAILED
    assert state.reason == (
        "web (blue) crashed: killed by SIGKILL; no previous version to roll back to"
    )
    # It is the only version there is: stopping what is left of it would be an outage.
    assert not any(isinstance(a, (r.StopColor, r.SwitchBack)) for a in actions)


def test_a_crash_before_traffic_fails_without_switching_back() -> None:
    state, _ = r.begin((WEB, JOBS), 0.0, r.Options())
    state, actions = r.step(state, r.Crash("web", "exited with code 3", 0.5))
    assert state.phase is r.Phase.FAILED
    assert state.reason == "web (green) exited before it took traffic: exited with code 3"
    assert not any(isinstance(a, r.SwitchBack) for a in actions)


# --- health checks after the switch: a streak of failures, ended by a pass ----------------------


def first_unhealthy(probes: list[tuple[str, bool]]) -> int | None:
    """Index of the probe that makes some service fail `unhealthy_threshold` checks in a row."""
    threshold = {"web": WEB.unhealthy_threshold, "jobs": JOBS.unhealthy_threshold}
    run = dict.fromkeys(threshold, 0)
    for i, (service, ok) in enumerate(probes):
        run[service] = 0 if ok else run[service] + 1
        if run[service] == threshold[service]:
            return i
    return None


@settings(max_examples=300)
@given(
    st.sampled_from(TRAFFIC_PHASES),
    st.lists(st.tuples(st.sampled_from(["web", "jobs"]), st.booleans()), max_size=30),
)
def test_health_streak_after_the_switch(phase: str, probes: list[tuple[str, bool]]) -> None:
    state = reach(phase)
    expected = first_unhealthy(probes)
    for i, (service, ok) in enumerate(probes):
        state, _ = r.step(state, r.Probe(service, ok, "HTTP 503" if not ok else "HTTP 200", 3.0))
        if expected is not None and i >= expected:
            assert state.phase is r.Phase.ROLLING_BACK
            break
        assert state.phase == phase, (i, probes)
    if expected is None:
        assert state.phase == phase
    else:
        service = probes[expected][0]
        plan = WEB if service == "web" else JOBS
        assert state.reason == (
            f"{service} ({plan.new_color}) failed {plan.unhealthy_threshold} health checks "
            "in a row (last: HTTP 503)"
        )


def test_a_passing_probe_ends_the_health_streak() -> None:
    state = reach("baking")
    for ok in (False, False, True, False, False):
        state, _ = r.step(state, r.Probe("web", ok, "x", 3.0))
    assert state.phase is r.Phase.BAKING
    state, _ = r.step(state, r.Probe("web", False, "HTTP 503", 4.0))
    assert state.phase is r.Phase.ROLLING_BACK


def test_probes_before_the_switch_do_not_count_towards_the_unhealthy_streak() -> None:
    state, _ = r.begin((WEB,), 0.0, options("baking"))
    for ok in (False, False, True, True):  # two failures while starting, then healthy
        state, _ = r.step(state, r.Probe("web", ok, "x", 1.0))
    state, _ = r.step(state, r.Switched(1.1))
    state, _ = r.step(state, r.Probe("web", False, "HTTP 503", 2.0))
    assert state.phase is r.Phase.DRAINING


# --- analysis: a streak of failed measurements, ended by a pass ---------------------------------


def first_failed(measurements: list[tuple[str, Verdict]], limits: dict[str, int]) -> int | None:
    """The rule in plain words: a check fails once its last `limit` conclusive verdicts all FAIL
    (an inconclusive measurement between them neither ends the run nor extends it)."""
    seen: dict[str, list[Verdict]] = {name: [] for name in limits}
    for i, (check, verdict) in enumerate(measurements):
        if verdict != "inconclusive":
            seen[check].append(verdict)
        tail = seen[check][-limits[check] :]
        if len(tail) == limits[check] and all(v == "fail" for v in tail):
            return i
    return None


@settings(max_examples=400)
@given(
    st.sampled_from(["step", "baking"]),
    st.integers(1, 4),
    st.lists(
        st.tuples(
            st.sampled_from(["error_rate", "latency_p99_ms"]),
            st.sampled_from(["pass", "fail", "inconclusive"]),
        ),
        max_size=40,
    ),
)
def test_measurement_streak(
    phase: str, limit: int, measurements: list[tuple[str, Verdict]]
) -> None:
    checks = (r.CheckPlan("error_rate", limit), LATENCY)
    limits = {"error_rate": limit, "latency_p99_ms": LATENCY.failure_limit}
    state = reach(phase, options(phase, checks))
    expected = first_failed(measurements, limits)
    for i, (check, verdict) in enumerate(measurements):
        before = state
        state, actions = r.step(state, measured(check, verdict))
        if i == expected:
            assert state.phase is r.Phase.ROLLING_BACK
            assert r.SwitchBack((("web", "blue"),)) in actions
            assert state.reason == (
                f"analysis failed: {check} fail ({limits[check]} failed measurements in a row)"
            )
            break
        assert state.phase == phase, (i, measurements)
        assert state.step_index == before.step_index and actions == []


def test_a_passing_measurement_ends_the_streak() -> None:
    state = reach("baking", options("baking", (LATENCY,)))
    for verdict in ("fail", "fail", "pass", "fail", "fail"):
        state, _ = r.step(state, measured("latency_p99_ms", verdict))  # type: ignore[arg-type]
    assert state.phase is r.Phase.BAKING
    state, _ = r.step(state, measured("latency_p99_ms", "fail"))
    assert state.phase is r.Phase.ROLLING_BACK


def test_the_streak_goes_on_across_canary_steps() -> None:
    state = reach("step")
    state, _ = r.step(state, measured("error_rate", "fail"))
    state, _ = r.step(state, r.Tick(200.0))  # the pause is over; a FAIL is conclusive: go on
    assert state.phase is r.Phase.STEP and state.weight == 50
    state, _ = r.step(state, measured("error_rate", "fail", 201.0))
    assert state.phase is r.Phase.ROLLING_BACK


def test_a_measurement_of_an_unknown_check_changes_nothing() -> None:
    state = reach("baking")
    after, actions = r.step(state, measured("latency_p99_ms", "fail"))
    assert after == state and actions == []


@pytest.mark.parametrize("phase", ["switching", "draining"])
def test_measurements_between_steps_and_bake_are_not_counted(phase: str) -> None:
    state = reach(phase)
    for _ in range(3):
        state, actions = r.step(state, measured("error_rate", "fail"))
        assert state.phase == phase and actions == []


# --- inconclusive analysis ----------------------------------------------------------------------


@settings(max_examples=300)
@given(
    st.sampled_from(["pass", "fail", "wait"]),
    st.lists(st.sampled_from(["pass", "inconclusive"]), max_size=6),
)
def test_the_end_of_the_bake_without_a_conclusive_measurement_follows_on_inconclusive(
    policy: str, verdicts: list[Verdict]
) -> None:
    state = reach("baking", options("baking", on_inconclusive=policy))
    for verdict in verdicts:
        state, _ = r.step(state, measured("error_rate", verdict))
    state, _ = r.step(state, r.Tick(1.2 + 100.0))
    if "pass" in verdicts:
        assert state.phase is r.Phase.SUCCEEDED
    elif policy == "pass":
        assert state.phase is r.Phase.SUCCEEDED
        assert state.reason.startswith("live, unverified: error_rate")
    elif policy == "fail":
        assert state.phase is r.Phase.ROLLING_BACK
        assert state.reason.startswith("analysis inconclusive: error_rate (")
    else:
        assert state.phase is r.Phase.BAKING
        assert state.waiting.startswith("waiting for traffic: error_rate")
        state, _ = r.step(state, measured("error_rate", "pass", 103.0))
        assert state.phase is r.Phase.SUCCEEDED


def test_a_new_canary_step_needs_its_own_conclusive_measurement() -> None:
    state = reach("step", options("step", on_inconclusive="fail"))
    state, _ = r.step(state, measured("error_rate", "pass"))
    state, _ = r.step(state, r.Tick(101.1))
    assert state.phase is r.Phase.STEP and state.weight == 50
    state, _ = r.step(state, measured("error_rate", "inconclusive", 102.0))
    state, _ = r.step(state, r.Tick(201.2))
    assert state.phase is r.Phase.ROLLING_BACK
    assert state.reason == "analysis inconclusive: error_rate (error_rate inconclusive)"


def test_the_bake_needs_its_own_conclusive_measurement() -> None:
    steps = (r.Step(10, 1.0), r.Step(100))
    opts = r.Options("canary", steps, bake=5.0, on_inconclusive="fail", checks=(ERRORS,))
    state = reach("step", opts)
    state, _ = r.step(state, measured("error_rate", "pass"))
    state, _ = r.step(state, r.Tick(3.0))
    assert state.phase is r.Phase.SWITCHING
    state, _ = r.step(state, r.Switched(3.1))
    state, _ = r.step(state, r.Drained(3.2))
    assert state.phase is r.Phase.BAKING
    state, _ = r.step(state, r.Tick(9.0))
    assert state.phase is r.Phase.ROLLING_BACK
    assert state.reason == "analysis inconclusive: error_rate (error_rate pass)"
