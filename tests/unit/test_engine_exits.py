"""Knowing of a death at once: the engine acts on the runtime's `exited`, not on its next check.

Health checks here come once a minute, so only the runtime's word can explain a switch back within
the tests' bounds; the same scenarios over a runtime that cannot watch (an old kernel) fall back
on the probes and the supervisor's periodic pass.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine_doubles import FAST, MemoryRuntime, Rig, make_rig, run, until

from conveyor.engine.engine import Engine
from conveyor.engine.fleet import Key
from conveyor.engine.outcome import Outcome
from conveyor.engine.supervisor import Supervisor

# One probe makes a color healthy; the next comes a minute later.
SLOW_PROBES = FAST.replace(
    'interval = "10ms", healthy_threshold = 2', 'interval = "60s", healthy_threshold = 1'
)
BAKE = '\n[environments.dev.rollout]\nbake = "60s"\n'
CANARY = """
[environments.dev.rollout]
strategy = "canary"
steps = [{ weight = 30, pause = "60s" }, { weight = 100 }]
"""


def blind(rig: Rig) -> None:
    """The same rig over a runtime that cannot tell of an exit."""
    runtime = MemoryRuntime(watch=False)
    rig.runtime = runtime
    rig.engine = Engine(
        rig.dir, rig.engine.ctx.paths, rig.store, runtime, rig.router, probe=runtime.probe
    )


def deploy(rig: Rig, version: str) -> Outcome:
    outcome: Outcome = run(rig.engine.deploy("dev", version, rig.emit))
    assert outcome.outcome == "succeeded", outcome.reason
    return outcome


async def crash_once(rig: Rig, weights: dict[str, int]) -> Outcome:
    """Deploy v2, kill it once the route has `weights`, and return how the deploy ended."""
    task = asyncio.create_task(rig.engine.deploy("dev", "v2", rig.emit))
    await until(lambda: rig.router.splits.get("dev/web") is not None, "a route")
    await until(lambda: rig.router.weights() == weights, f"the route at {weights}")
    rig.runtime.crash("v2", detail="killed by SIGKILL")
    return await asyncio.wait_for(task, 30)


def test_a_crash_in_the_bake_is_switched_back_at_once_and_the_time_recorded(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, BAKE, base=SLOW_PROBES)
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    out: Outcome = run(crash_once(rig, {"green": 100}))
    assert (out.exit_code, out.outcome) == (1, "rolled_back"), out.reason
    assert out.reason.startswith("web (green) crashed: killed by SIGKILL at "), out.reason
    assert " UTC; switched back to v1 in " in out.reason and out.reason.endswith(" ms")
    assert rig.router.weights() == {"blue": 100}
    assert rig.roles() == [("web", "blue", "v1", "active")]
    [ms] = out.data["death_to_switch_ms"].values()
    assert ms >= 0
    back = [e for e in rig.store.events(out.deployment_id or 0) if e.state == "switched_back"]
    assert back[0].data["death_to_switch_ms"] == {"web": ms}
    assert f"{ms:.0f} ms after web (green) ended" in back[0].reason


def test_a_crash_in_a_canary_step_is_switched_back_at_once(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, CANARY, base=SLOW_PROBES)
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    out: Outcome = run(crash_once(rig, {"green": 30, "blue": 70}))
    assert out.outcome == "rolled_back" and "switched back to v1 in" in out.reason, out.reason
    assert rig.router.weights() == {"blue": 100}


def test_without_a_watch_the_health_checks_find_the_crash_and_no_time_is_claimed(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, BAKE)
    blind(rig)
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    out: Outcome = run(crash_once(rig, {"green": 100}))
    assert out.outcome == "rolled_back", out.reason
    assert out.reason == "web (green) crashed: killed by SIGKILL", out.reason
    assert out.data["death_to_switch_ms"] == {}


def test_a_color_stopped_by_its_deployment_is_no_crash(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    rig.configure('[hooks]\nsmoke = "exit 1"\n')
    out: Outcome = run(rig.engine.deploy("dev", "v2", rig.emit))
    assert out.outcome == "failed" and out.reason.startswith("smoke test failed"), out.reason
    assert "last output" not in out.reason  # its exit was asked for, not a crash to explain


# --- after the deployment: the standby window, and outside any rollout -------------------------


def v2_over_v1(rig: Rig) -> None:
    rig.release("v1")
    rig.release("v2")
    deploy(rig, "v1")
    deploy(rig, "v2")


def test_a_crash_in_the_standby_window_is_switched_back_without_waiting_for_a_pass(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, base=SLOW_PROBES)
    v2_over_v1(rig)

    async def scenario() -> None:
        await rig.engine.supervise_once()  # the agent's first pass: watchers from here on
        rig.runtime.crash("v2", detail="exited with code 3")
        await until(lambda: rig.router.weights() == {"blue": 100}, "the switch back")
        await until(lambda: rig.engine.ctx.locks.holder("dev") is None, "the rollback's end")

    run(scenario())
    rollback, rolled_back = rig.store.list_deployments("shop", "dev")[:2]
    assert (rollback.kind, rollback.outcome) == ("rollback", "succeeded")
    assert rollback.reason.startswith(
        "automatic rollback: web v2 (green) exited during the standby window "
        "(exited with code 3 at "
    ), rollback.reason
    assert " UTC); switched back to v1 in " in rollback.reason
    assert (rolled_back.version, rolled_back.outcome) == ("v2", "rolled_back")
    switched = [e for e in rig.store.events(rollback.id) if e.state == "switched"]
    assert switched[0].data["death_to_switch_ms"] >= 0


def test_without_a_watch_the_standby_window_waits_for_the_periodic_pass(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    blind(rig)
    v2_over_v1(rig)

    async def scenario() -> list[str]:
        await rig.engine.supervise_once()
        rig.runtime.crash("v2")
        await asyncio.sleep(0.05)  # no watcher could act: nothing may have changed
        assert rig.router.weights() == {"green": 100}
        return await rig.engine.supervise_once()

    notes = run(scenario())
    assert any("exited during the standby window" in n for n in notes), notes
    assert rig.router.weights() == {"blue": 100}
    assert "switched back to v1 in" not in rig.store.list_deployments("shop", "dev")[0].reason


def test_a_standby_stopped_at_the_end_of_its_time_is_no_crash(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, '\n[environments.dev.rollout]\nstandby = "0s"\n')
    v2_over_v1(rig)

    async def scenario() -> list[str]:
        return await rig.engine.supervise_once()

    notes = run(scenario())
    assert any("stopped standby dev/web v1 (blue)" in n for n in notes), notes
    assert rig.roles() == [("web", "green", "v2", "active")]
    assert rig.router.weights() == {"green": 100}


def test_agent_shutdown_is_not_taken_for_crashes(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    v2_over_v1(rig)

    async def scenario() -> None:
        await rig.engine.supervise_once()
        await rig.engine.shutdown(keep_running=False)
        await asyncio.sleep(0.05)  # a watcher that survived would act now

    run(scenario())
    assert rig.runtime.running() == []
    # The rows stay as the desired state, and nothing was rolled back.
    assert sorted(rig.roles()) == [
        ("web", "blue", "v1", "standby"),
        ("web", "green", "v2", "active"),
    ]
    assert [d.kind for d in rig.store.list_deployments("shop", "dev")] == ["deploy", "deploy"]


# --- restarts with back-off, crash loops --------------------------------------------------------


class Clock:
    """The monotonic clock the engine's timers read, moved by the test (no sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def noted(supervisor: Supervisor, key: Key = ("dev", "web", "blue")) -> bool:
    """Has the supervisor noted the exit of that color (and not restarted it yet)?"""
    crashes = supervisor.crashes.get(key)
    return crashes is not None and crashes.down


def on_a_clock(rig: Rig) -> Clock:
    clock = Clock()
    rig.engine = Engine(
        rig.dir,
        rig.engine.ctx.paths,
        rig.store,
        rig.runtime,
        rig.router,
        monotonic=clock,
        probe=rig.runtime.probe,
    )
    return clock


def test_restarts_back_off_and_three_in_ten_minutes_are_a_crash_loop(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    clock = on_a_clock(rig)
    rig.release("v1")
    deploy(rig, "v1")  # a first deployment: no standby to go back to
    supervisor = rig.engine.supervisor

    async def crash_and_wait(wait: float) -> list[str]:
        """v1 crashes; it is restarted once `wait` has passed, not before."""
        rig.runtime.crash("v1", detail="exited with code 3")
        await until(lambda: noted(supervisor), "the exit noted")
        clock.now += wait - 0.001
        assert await rig.engine.supervise_once() == []
        assert rig.runtime.running() == []
        clock.now += 0.001
        notes = await rig.engine.supervise_once()
        assert rig.runtime.running() == [("web", "blue", "v1")], notes
        return notes

    async def scenario() -> list[str]:
        await rig.engine.supervise_once()  # watchers from here on
        first = await crash_and_wait(1.0)
        assert first == ["restarted dev/web v1 (blue): it exited with code 3"]
        status = await rig.engine.status("dev")
        assert status["services"][0]["active"]["restarts"]["summary"] == "1 restart"
        await crash_and_wait(2.0)
        return await crash_and_wait(4.0)

    notes = run(scenario())
    assert "crash-looping: recorded in the history" in notes[0], notes
    [loop, deployed] = rig.store.list_deployments("shop", "dev")
    assert (loop.kind, loop.outcome, loop.version) == ("crash_loop", "failed", "v1")
    assert loop.reason.startswith(
        "web v1 (blue): crash-looping — 3 restarts in 6s, last: exited with code 3 at "
    ), loop.reason
    assert loop.reason.endswith(" UTC; restarted after 1s, 2s, 4s")
    assert (deployed.kind, deployed.outcome) == ("deploy", "succeeded")  # never rewritten
    status = run(rig.engine.status("dev"))
    restarts = status["services"][0]["active"]["restarts"]
    assert restarts["crash_looping"] is True and restarts["restarts"] == 3
    assert restarts["backoff"] == [1.0, 2.0, 4.0]
    assert restarts["last_exit"]["detail"] == "exited with code 3"
    assert restarts["next_restart_in"] is None  # it runs
    assert status["last_deployment"]["id"] == deployed.id  # a crash loop is no deployment


def test_a_crash_outside_a_rollout_is_restarted_after_a_second_without_a_pass(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path)
    rig.release("v1")
    deploy(rig, "v1")

    async def scenario() -> None:
        await rig.engine.supervise_once()
        rig.runtime.crash("v1")
        await until(lambda: rig.runtime.running() == [("web", "blue", "v1")], "the restart")

    run(scenario())
    [row] = rig.store.instances("shop", "dev")
    assert rig.router.splits["dev/web"].backends[0].port == row.handle["endpoints"][0]["port"]


def test_a_new_version_in_the_same_color_starts_with_a_clean_record(tmp_path: Path) -> None:
    # The clock stands still unless the test moves it: no bake to wait out.
    rig = make_rig(tmp_path, '\n[environments.dev.rollout]\nstandby = "0s"\nbake = "0s"\n')
    clock = on_a_clock(rig)
    rig.release("v1")
    deploy(rig, "v1")

    async def crash_v1() -> None:
        await rig.engine.supervise_once()
        rig.runtime.crash("v1")
        await until(lambda: noted(rig.engine.supervisor), "the exit noted")
        clock.now += 1
        await rig.engine.supervise_once()

    run(crash_v1())
    assert run(rig.engine.status("dev"))["services"][0]["active"]["restarts"]["restarts"] == 1
    for version in ("v2", "v3"):  # v3 lands in blue again
        rig.release(version)
        deploy(rig, version)
        run(rig.engine.supervise_once())  # the standby (0s) ends
    status = run(rig.engine.status("dev"))
    assert status["services"][0]["active"]["color"] == "blue"
    assert status["services"][0]["active"]["restarts"] is None
