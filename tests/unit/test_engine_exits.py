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
from conveyor.engine.outcome import Outcome

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
