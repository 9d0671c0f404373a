"""Planning a rollback of an environment, and what begin() refuses: plain cases, fast (the mutation
check runs them for every mutant of core/rollout.py)."""

from __future__ import annotations

import pytest

from conveyor.core import rollout as r

PLANS = (
    r.ServicePlan("web", "web", "blue", "green", 2, 10.0),
    r.ServicePlan("api", "web", None, "blue", 3, 10.0),
    r.ServicePlan("jobs", "worker", "green", "blue", 1, 10.0),
)


def live(service: str, color: str, version: str, role: str, alive: bool = True) -> r.LiveColor:
    return r.LiveColor(service, "web", color, version, role, alive)  # type: ignore[arg-type]


def test_rollback_prefers_a_running_standby() -> None:
    plan = r.plan_rollback(
        (live("web", "green", "v2", "active"), live("web", "blue", "v1", "standby")), "v1"
    )
    assert plan.mode == "switch" and plan.version == "v1" and plan.switch == (("web", "blue"),)


def test_rollback_redeploys_when_the_standby_is_gone_or_versions_differ() -> None:
    dead = (live("web", "green", "v2", "active"), live("web", "blue", "v1", "standby", alive=False))
    assert r.plan_rollback(dead, "v1").mode == "redeploy"
    mixed = (
        live("web", "green", "v3", "active"),
        live("web", "blue", "v1", "standby"),
        live("api", "green", "v3", "active"),
        live("api", "blue", "v2", "standby"),
    )
    assert r.plan_rollback(mixed, "v2") == r.RollbackPlan(
        "redeploy", "v2", (), "no standby running: redeploying v2"
    )
    assert r.plan_rollback((live("web", "green", "v1", "active"),), None).mode == "none"


def test_other_color() -> None:
    assert r.other_color(None) == "blue"
    assert r.other_color("blue") == "green"
    assert r.other_color("green") == "blue"


def test_rollback_switches_every_web_service_to_its_standby_and_ignores_workers() -> None:
    live_colors = (
        live("web", "green", "v2", "active"),
        live("web", "blue", "v1", "standby"),
        live("api", "blue", "v2", "active"),
        live("api", "green", "v1", "standby"),
        r.LiveColor("jobs", "worker", "blue", "v2", "active", True),
    )
    assert r.plan_rollback(live_colors, "v0") == r.RollbackPlan(
        "switch", "v1", (("web", "blue"), ("api", "green")), "switching back to standby v1"
    )


def test_rollback_needs_a_standby_for_every_live_web_service() -> None:
    partial = (
        live("web", "green", "v2", "active"),
        live("web", "blue", "v1", "standby"),
        live("api", "blue", "v2", "active"),
    )
    assert r.plan_rollback(partial, "v1").mode == "redeploy"
    # Workers alone have no standby to switch to: redeploy, or nothing at all.
    workers = (r.LiveColor("jobs", "worker", "blue", "v2", "active", True),)
    assert r.plan_rollback(workers, "v1") == r.RollbackPlan(
        "redeploy", "v1", (), "no standby running: redeploying v1"
    )
    assert r.plan_rollback((), None) == r.RollbackPlan(
        "none", None, (), "nothing to roll back to: no earlier successful deployment"
    )


def test_begin_refuses_what_cannot_be_rolled_out() -> None:
    with pytest.raises(ValueError, match=r"^a rollout needs at least one service$"):
        r.begin((), 0.0)
    for steps in ((), (r.Step(10), r.Step(50))):
        with pytest.raises(
            ValueError, match=r"^a canary rollout needs steps ending at weight 100$"
        ):
            r.begin(PLANS, 0.0, r.Options("canary", steps))


def test_a_rollout_knows_its_services_and_whether_there_is_an_old_version() -> None:
    state, _ = r.begin(PLANS, 0.0)
    assert state.service("api").plan is PLANS[1]
    with pytest.raises(KeyError, match="nope"):
        state.service("nope")
    assert state.has_old
    only_new, _ = r.begin((PLANS[1],), 0.0)
    assert not only_new.has_old
    workers, _ = r.begin((PLANS[2],), 0.0)
    assert not workers.has_old  # an old worker is replaced, never switched back to


def test_times_count_from_the_start_of_the_rollout() -> None:
    state, _ = r.begin(PLANS[:1], 100.0)
    assert (state.started_at, state.phase_started_at) == (100.0, 100.0)
    state, actions = r.step(state, r.Tick(109.9))  # start_timeout is 10s
    assert state.phase is r.Phase.STARTING and actions == []
    state, _ = r.step(state, r.Tick(110.0))
    assert state.phase is r.Phase.FAILED
