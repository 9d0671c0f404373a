"""The engine's decisions against in-memory doubles of the runtime and the router.

Deploy, canary, rollback and the supervisor, each in milliseconds; tests/integration runs the same
engine against real processes and the real proxy.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from engine_doubles import FAST, Rig, make_rig, run, until

from conveyor.engine.engine import Engine
from conveyor.engine.errors import Refused, UserError
from conveyor.engine.outcome import Outcome
from conveyor.store import audit


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


def deploy(rig: Rig, version: str, env: str = "dev") -> Outcome:
    outcome: Outcome = run(rig.engine.deploy(env, version, rig.emit))
    return outcome


def v2_over_v1(rig: Rig) -> None:
    """v1 deployed, then v2: v2 takes the traffic, v1 waits on standby."""
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    deploy(rig, "v2")


def test_first_deploy_then_blue_green_switch_keeps_the_old_color_on_standby(rig: Rig) -> None:
    rig.release("v1")
    rig.release("v2")
    first = deploy(rig, "v1")
    assert (first.exit_code, first.outcome) == (0, "succeeded")
    assert rig.router.weights() == {"blue": 100}
    assert rig.roles() == [("web", "blue", "v1", "active")]

    second = deploy(rig, "v2")
    assert (second.exit_code, second.outcome) == (0, "succeeded"), second.reason
    assert rig.router.weights() == {"green": 100}
    # The route carries the router's own options for the environment, and the new endpoint.
    split = rig.router.splits["dev/web"]
    assert (split.host, split.port, split.options) == ("127.0.0.1", 18080, {"env": "dev"})
    assert split.backends[0].host == "mem"
    assert sorted(rig.roles()) == [
        ("web", "blue", "v1", "standby"),
        ("web", "green", "v2", "active"),
    ]
    assert rig.runtime.running() == [("web", "blue", "v1"), ("web", "green", "v2")]
    # The workload got the service's command with the placeholder, and a port to choose.
    w = rig.runtime.w.started[-1]
    assert (w.command, w.port, w.env["CONVEYOR_VERSION"]) == ("serve --port {port}", 0, "v2")
    assert rig.outcomes() == [("v1", "deploy", "succeeded"), ("v2", "deploy", "succeeded")]
    states = [e.state for e in rig.store.events(second.deployment_id or 0)]
    assert states[0] == "plan" and "standby" in states and "drained" in states


def test_a_version_that_never_gets_healthy_takes_no_traffic(rig: Rig) -> None:
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    rig.runtime.w.unhealthy_versions.add("v2")
    applied = len(rig.router.applied)
    out = deploy(rig, "v2")
    assert (out.exit_code, out.outcome) == (1, "failed")
    assert "health" in out.reason or "start" in out.reason, out.reason
    assert len(rig.router.applied) == applied  # no route was touched
    assert rig.router.weights() == {"blue": 100}
    assert rig.roles() == [("web", "blue", "v1", "active")]
    assert rig.runtime.running() == [("web", "blue", "v1")]


def test_a_version_that_cannot_start_fails_with_nothing_half_done(rig: Rig) -> None:
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    rig.runtime.w.fail_start.add("v2")
    out = deploy(rig, "v2")
    assert out.outcome == "failed" and "cannot start v2" in out.reason
    assert rig.roles() == [("web", "blue", "v1", "active")]
    assert rig.router.weights() == {"blue": 100}


def test_crash_during_the_bake_switches_back_to_the_standby(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.configure('\n[environments.dev.rollout]\nbake = "30s"\n')
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")

    async def scenario() -> Outcome:
        task = asyncio.create_task(rig.engine.deploy("dev", "v2", rig.emit))
        await until(lambda: rig.router.weights() == {"green": 100}, "the switch to green")
        rig.runtime.crash("v2")
        return await task

    out: Outcome = run(scenario())
    assert (out.exit_code, out.outcome) == (1, "rolled_back"), out.reason
    assert rig.router.weights() == {"blue": 100}
    assert rig.roles() == [("web", "blue", "v1", "active")]


def test_failed_analysis_rolls_back_and_records_the_trigger(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.configure(
        """
        [environments.dev.rollout]
        bake = "30s"
        [[environments.dev.rollout.analysis]]
        metric = "error_rate"
        max = 0.01
        interval = "20ms"
        window = "10s"
        min_requests = 10
        failure_limit = 2
        """
    )
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")

    async def scenario() -> Outcome:
        task = asyncio.create_task(rig.engine.deploy("dev", "v2", rig.emit))
        await until(lambda: rig.router.weights() == {"green": 100}, "the switch to green")
        while not task.done():  # keep failing traffic coming, as users would
            rig.router.serve("green", ok=50, errors=50)
            await asyncio.sleep(0.01)
        return await task

    out: Outcome = run(scenario())
    assert out.outcome == "rolled_back", out.reason
    assert "error_rate" in out.reason
    assert rig.router.weights() == {"blue": 100}
    events = rig.store.events(out.deployment_id or 0)
    assert any(e.state == "measurement" for e in events)


def test_canary_steps_move_weights_then_all_traffic(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.configure(
        """
        [environments.dev.rollout]
        strategy = "canary"
        steps = [{ weight = 20, pause = "50ms" }, { weight = 60, pause = "50ms" }, { weight = 100 }]
        sticky = { header = "X-User" }
        """
    )
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    out = deploy(rig, "v2")
    assert out.outcome == "succeeded", out.reason
    weights = [
        {b.color: b.weight for b in s.backends} for s in rig.router.applied if s.route == "dev/web"
    ]
    assert {"green": 20, "blue": 80} in weights
    assert {"green": 60, "blue": 40} in weights
    assert weights[-1] == {"green": 100}
    shared = [s for s in rig.router.applied if len(s.backends) == 2]
    assert all(s.sticky == {"header": "X-User"} for s in shared)


def test_rollback_switches_to_the_standby_and_marks_the_rolled_back_deployment(
    rig: Rig,
) -> None:
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    second = deploy(rig, "v2")
    out: Outcome = run(rig.engine.rollback("dev", rig.emit))
    assert (out.exit_code, out.outcome) == (0, "succeeded"), out.reason
    assert rig.router.weights() == {"blue": 100}
    assert rig.roles() == [("web", "blue", "v1", "active")]
    assert rig.outcomes() == [
        ("v1", "deploy", "succeeded"),
        ("v2", "deploy", "rolled_back"),
        ("v1", "rollback", "succeeded"),
    ]
    # Appended, not rewritten: the rolled-back deployment keeps its own outcome and gets an event.
    assert rig.store.events(second.deployment_id or 0)[-1].state == "rolled_back"
    record = rig.store.get_deployment(second.deployment_id or 0)
    assert record is not None and record.reason.startswith(
        f"rolled back by deployment #{out.deployment_id}"
    )


def test_rollback_without_standby_redeploys_the_previous_release(rig: Rig) -> None:
    v2_over_v1(rig)
    rig.runtime.crash("v1")  # the standby is gone
    out: Outcome = run(rig.engine.rollback("dev", rig.emit))
    assert out.outcome == "succeeded", out.reason
    assert rig.outcomes()[-1] == ("v1", "rollback", "succeeded")
    assert rig.outcomes()[1] == ("v2", "deploy", "rolled_back")
    assert ("web", "v1") in {(s, v) for s, _c, v in rig.runtime.running()}


def test_nothing_to_roll_back_to_is_refused(rig: Rig) -> None:
    rig.release("v1")
    deploy(rig, "v1")
    with pytest.raises(Refused, match="cannot roll back dev"):
        run(rig.engine.rollback("dev", rig.emit))


def test_a_second_operation_on_the_same_environment_is_refused(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.configure('\n[environments.dev.rollout]\nbake = "30s"\n')
    rig.release("v1")
    rig.release("v2")

    async def scenario() -> None:
        task = asyncio.create_task(rig.engine.deploy("dev", "v1", rig.emit))
        await until(lambda: rig.engine.ctx.locks.holder("dev") is not None, "the lock")
        with pytest.raises(Refused, match="already in progress"):
            await rig.engine.deploy("dev", "v2", rig.emit)
        with pytest.raises(Refused, match="already in progress"):
            await rig.engine.rollback("dev", rig.emit)
        status = await rig.engine.status("dev")
        assert status["deploying"] == "deploy of v1"
        rig.engine.abort("dev", "test is over")
        await task

    run(scenario())
    assert rig.engine.ctx.locks.holder("dev") is None


def test_unknown_release_and_port_clash_are_user_errors_that_change_nothing(rig: Rig) -> None:
    rig.release("v1")
    with pytest.raises(UserError, match="unknown release 'v9'"):
        deploy(rig, "v9")
    rig.configure(
        """
        [environments.dev]
        [environments.qa]
        """
    )
    deploy(rig, "v1", env="dev")
    with pytest.raises(UserError, match=r"services\.web\.port: port 18080 is already served"):
        deploy(rig, "v1", env="qa")
    assert rig.store.list_deployments("shop", "qa") == []


def test_router_refusing_the_switch_leaves_traffic_on_the_old_version(rig: Rig) -> None:
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    rig.router.refuse = "cannot listen"
    out = deploy(rig, "v2")
    assert out.outcome == "failed" and "cannot listen" in out.reason
    assert rig.roles() == [("web", "blue", "v1", "active")]


# --- the supervisor ---------------------------------------------------------------------------


def test_supervisor_restarts_an_active_color_that_exited(rig: Rig) -> None:
    rig.release("v1")
    deploy(rig, "v1")
    rig.runtime.crash("v1")

    async def restarted_after_its_back_off() -> list[str]:
        notes = await rig.engine.supervise_once()
        assert not any("restarted" in n for n in notes), notes  # 1 s first
        await until(lambda: rig.runtime.running() == [("web", "blue", "v1")], "the restart")
        return notes

    run(restarted_after_its_back_off())
    # The route follows the new workload's endpoint.
    [row] = rig.store.instances("shop", "dev")
    assert rig.router.splits["dev/web"].backends[0].port == row.handle["endpoints"][0]["port"]
    # Back-off: a second exit right away is not restarted on this pass.
    rig.runtime.crash("v1")
    assert not any("restarted" in n for n in run(rig.engine.supervise_once()))


def test_supervisor_switches_back_when_the_new_version_dies_during_the_standby_window(
    rig: Rig,
) -> None:
    v2_over_v1(rig)
    rig.runtime.crash("v2")
    notes = run(rig.engine.supervise_once())
    assert any("exited during the standby window" in n for n in notes), notes
    assert rig.router.weights() == {"blue": 100}
    assert rig.outcomes()[-1][1:] == ("rollback", "succeeded")
    # The agent's own decision, in the audit log as such.
    [entry] = audit.entries(rig.store, action="rollback")
    assert (entry.actor, entry.target, entry.outcome) == ("conveyor-agent", "v1", "ok")
    assert entry.data["automatic"] and "standby window" in entry.detail


def test_supervisor_switches_back_after_failed_health_checks_in_the_standby_window(
    rig: Rig,
) -> None:
    v2_over_v1(rig)
    rig.runtime.sicken("v2")
    first = run(rig.engine.supervise_once())  # 1 failure: below unhealthy_threshold = 2
    assert rig.router.weights() == {"green": 100}, first
    notes = run(rig.engine.supervise_once())
    assert any("failed 2 health checks in a row" in n for n in notes), notes
    assert rig.router.weights() == {"blue": 100}


def test_supervisor_stops_a_standby_whose_time_is_over(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.configure('\n[environments.dev.rollout]\nstandby = "0s"\n')
    v2_over_v1(rig)
    notes = run(rig.engine.supervise_once())
    assert any("stopped standby dev/web v1 (blue)" in n for n in notes), notes
    assert rig.roles() == [("web", "green", "v2", "active")]
    assert rig.runtime.running() == [("web", "green", "v2")]


def test_recover_adopts_what_runs_and_restores_routes_of_a_restarted_router(rig: Rig) -> None:
    rig.release("v1")
    deploy(rig, "v1")
    rig.router.restarted = True  # the router lost its routes while the agent was away
    # A new agent over the same state: its own engine, the same database, runtime and router.
    engine = Engine(
        rig.dir,
        rig.engine.ctx.paths,
        rig.store,
        runtime=rig.runtime,
        router=rig.router,
        probe=rig.runtime.probe,
    )
    notes = run(engine.recover())
    assert "started the proxy and restored its routes" in notes
    assert any(n.startswith("adopted dev/web v1 (blue), id ") for n in notes), notes
    assert rig.router.weights() == {"blue": 100}


def test_interrupted_deployment_is_aborted_and_ends_on_the_old_version(rig: Rig) -> None:
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    # A deployment the previous agent never finished, with its new color already started.
    dep = rig.engine.ctx.journal.open("shop", "dev", "v2", "deploy", "v1")
    handle = run(
        rig.engine.ctx.fleet.spawn(
            rig.engine.ctx.project.environment("dev"), "web", "green", "v2", rig.dir
        )
    )
    release = rig.store.get_release("shop", "v2")
    assert release is not None
    rig.engine.ctx.fleet.record("dev", "web", "green", release, handle, "starting", dep)
    notes = run(rig.engine.recover())
    assert any("was interrupted by an agent restart: aborted" in n for n in notes), notes
    assert rig.outcomes()[-1] == ("v2", "deploy", "aborted")
    assert rig.roles() == [("web", "blue", "v1", "active")]
    assert ("web", "green", "v2") not in rig.runtime.running()


def test_status_shows_active_standby_and_last_deployment(rig: Rig) -> None:
    v2_over_v1(rig)
    status = run(rig.engine.status("dev"))
    [web] = status["services"]
    assert web["active"]["version"] == "v2" and web["active"]["healthy"] is True
    assert web["standby"]["version"] == "v1" and web["standby"]["running"] is True
    assert web["url"] == "http://127.0.0.1:18080"
    assert status["last_deployment"]["version"] == "v2"
    assert status["deploying"] is None


# --- redeploying the live version, stop and start, what status says -----------------------------


def test_redeploying_the_live_version_is_refused_unless_forced(rig: Rig) -> None:
    v2_over_v1(rig)
    with pytest.raises(UserError, match="v2 is already live in dev; use `conveyor deploy v2"):
        deploy(rig, "v2")
    assert sorted(rig.roles()) == [
        ("web", "blue", "v1", "standby"),
        ("web", "green", "v2", "active"),
    ]
    forced: Outcome = run(rig.engine.deploy("dev", "v2", rig.emit, force=True))
    assert forced.outcome == "succeeded" and forced.data["previous_version"] == "v2"


def test_stop_takes_an_environment_down_and_start_brings_its_version_back(rig: Rig) -> None:
    v2_over_v1(rig)
    stopped: Outcome = run(rig.engine.stop_env("dev", rig.emit))
    assert (stopped.outcome, stopped.data["version"]) == ("succeeded", "v2")
    assert rig.router.splits == {} and rig.roles() == [] and rig.runtime.running() == []
    with pytest.raises(Refused, match="stopped already"):
        run(rig.engine.stop_env("dev", rig.emit))
    # A stop is in the history, but never a version to roll back to or to mark rolled back.
    assert rig.outcomes()[-1] == ("v2", "stop", "succeeded")
    started: Outcome = run(rig.engine.start_env("dev", rig.emit))
    assert started.outcome == "succeeded", started.reason
    assert rig.outcomes()[-1] == ("v2", "start", "succeeded")
    assert rig.router.weights() == {"blue": 100} and rig.roles() == [
        ("web", "blue", "v2", "active")
    ]
    with pytest.raises(Refused, match="nothing to start"):
        run(rig.engine.start_env("dev", rig.emit))


def test_start_with_no_history_is_refused(rig: Rig) -> None:
    with pytest.raises(Refused, match="nothing ever went live in dev"):
        run(rig.engine.start_env("dev", rig.emit))


def test_status_shows_the_live_url_and_notes_an_edited_port(rig: Rig) -> None:
    rig.release("v1")
    deploy(rig, "v1")
    rig.configure("", base=FAST.replace("port = 18080", "port = 18081"))
    status = run(rig.engine.status("dev"))
    [web] = status["services"]
    assert web["url"] == "http://127.0.0.1:18080"
    assert web["configured_url"] == "http://127.0.0.1:18081"
    assert status["notes"] == [
        "web: conveyor.toml now says http://127.0.0.1:18081, but http://127.0.0.1:18080 is "
        "live; the next deploy applies it"
    ]


def test_services_get_the_path_as_it_is(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/opt/app/.venv/bin:/usr/bin")
    rig.release("v1")
    deploy(rig, "v1")
    assert rig.runtime.w.started[0].env["PATH"] == "/opt/app/.venv/bin:/usr/bin"


# --- unattended: a deploy with no traffic ends, and the analysis goes on through the standby ----

ANALYSIS = """
[[rollout.analysis]]
metric = "error_rate"
max = 0.01
interval = "20ms"
window = "10s"
min_requests = 10
failure_limit = 2
"""


def test_bluegreen_without_traffic_ends_live_unverified_by_default(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, base=FAST.replace('on_inconclusive = "pass"\n', "") + ANALYSIS)
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    out = deploy(rig, "v2")  # nobody sends a request: every measurement is inconclusive
    assert (out.exit_code, out.outcome) == (0, "succeeded")
    assert out.reason.startswith("live, unverified: error_rate: ")
    assert rig.router.weights() == {"green": 100}


def test_failing_analysis_during_the_standby_window_switches_back(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, base=FAST + ANALYSIS)
    v2_over_v1(rig)
    assert rig.router.weights() == {"green": 100}

    async def scenario() -> list[str]:
        notes: list[str] = []

        def back() -> bool:
            return rig.router.weights() == {"blue": 100}

        async def users() -> None:  # failing traffic on the new version, as users would see it
            while not back():
                rig.router.serve("green", ok=50, errors=50)
                await asyncio.sleep(0.01)

        traffic = asyncio.create_task(users())
        while not back():
            notes.extend(await rig.engine.supervise_once())
            await asyncio.sleep(0.02)
        await traffic
        return notes

    notes = run(asyncio.wait_for(scenario(), 30))
    assert any("analysis failed during the standby window: error_rate" in n for n in notes), notes
    assert rig.outcomes()[-1][1:] == ("rollback", "succeeded")
    rolled_back = rig.store.list_deployments("shop", "dev")[1]
    assert (rolled_back.version, rolled_back.outcome) == ("v2", "rolled_back")
    # The failed measurements are in the rolled-back deployment's history.
    events = rig.store.events(rolled_back.id)
    assert any(e.state == "measurement" and "standby window" in e.reason for e in events)
    assert rig.engine.supervisor.standby_watch.watching() == set()


def test_the_standby_window_analysis_stops_with_the_standby(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, base=FAST + ANALYSIS)
    v2_over_v1(rig)

    async def scenario() -> None:
        await rig.engine.supervise_once()
        assert rig.engine.supervisor.standby_watch.watching() == {"dev"}
        rig.runtime.crash("v1")  # the standby is gone: nothing to switch back to
        await rig.engine.supervise_once()
        assert rig.engine.supervisor.standby_watch.watching() == set()

    run(scenario())
