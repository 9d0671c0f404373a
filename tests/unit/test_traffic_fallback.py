"""The standby color is its route's fallback exactly while it runs (engine over in-memory doubles).

The proxy may retry on a route's fallback a request the live color failed unanswered
(tests/integration/test_proxy_retry.py); here, the engine's side: which color the route falls
back on after each operation, and that no color is ever stopped while a route still falls back
on it (a retry would go to a process on its way out, or to whatever takes its port next).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from engine_doubles import FAST, MemoryRouter, MemoryRuntime, Rig, run, until

from conveyor.engine.engine import Engine
from conveyor.engine.outcome import Outcome
from conveyor.engine.traffic import RouteTable
from conveyor.paths import Paths
from conveyor.routers.kinds import FALLBACK, FEATURES
from conveyor.runtimes.base import Handle
from conveyor.store.db import Store

CANARY = """
[environments.dev.rollout]
strategy = "canary"
steps = [{ weight = 20, pause = "50ms" }, { weight = 100 }]
"""


class WatchedRuntime(MemoryRuntime):
    """Records every stop of a color that a route of `router` still fell back on."""

    def __init__(self, router: MemoryRouter) -> None:
        super().__init__()
        self.router = router
        self.stopped_while_fallback: list[int] = []

    async def stop(self, h: Handle, grace: float) -> None:
        port = h.endpoint.port if h.endpoint is not None else None
        for split in self.router.splits.values():
            if any(b.port == port for b in split.fallback):
                self.stopped_while_fallback.append(int(h.ref["id"]))
        await super().stop(h, grace)


def watched_rig(tmp: Path, features: frozenset[str] = FEATURES, extra: str = "") -> Rig:
    paths = Paths(tmp / ".conveyor")
    paths.ensure()
    store = Store.open("sqlite://")
    router = MemoryRouter(features)
    runtime = WatchedRuntime(router)
    engine = Engine(tmp, paths, store, runtime=runtime, router=router, probe=runtime.probe)
    rig = Rig(engine, runtime, router, store, tmp)
    rig.configure(extra, FAST)
    for version in ("v1", "v2", "v3"):
        rig.release(version)
    return rig


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return watched_rig(tmp_path)


def deploy(rig: Rig, version: str) -> Outcome:
    outcome: Outcome = run(rig.engine.deploy("dev", version, rig.emit))
    assert outcome.outcome in ("succeeded", "rolled_back"), outcome.reason
    return outcome


def fallback(rig: Rig) -> list[tuple[str, int]]:
    """(color, port) of the fallback of dev/web, as the router has it."""
    return [(b.color, b.port) for b in rig.router.splits["dev/web"].fallback]


def port_of(rig: Rig, color: str) -> int:
    [row] = [r for r in rig.store.instances("shop", "dev") if r.color == color]
    return int(row.handle["endpoints"][0]["port"])


def no_stop_while_fallback(rig: Rig) -> None:
    assert isinstance(rig.runtime, WatchedRuntime)
    assert rig.runtime.stopped_while_fallback == []


def test_the_previous_color_is_the_fallback_from_the_switch_on_and_saved(rig: Rig) -> None:
    deploy(rig, "v1")
    assert fallback(rig) == []  # a first deployment has no standby
    deploy(rig, "v2")
    assert rig.router.weights() == {"green": 100}
    assert fallback(rig) == [("blue", port_of(rig, "blue"))]
    # The switch itself carried it: no split without it was applied in between.
    last_two = [s for s in rig.router.applied if s.route == "dev/web"][-1:]
    assert [b.color for b in last_two[0].fallback] == ["blue"]
    # routes.json keeps it, for a router that restarts while the agent is away.
    table = RouteTable(rig.engine.ctx.paths.home / "routes.json")
    table.load()
    assert table.routes["dev/web"] == rig.router.splits["dev/web"]


def test_the_next_deploy_replaces_the_fallback_and_never_stops_one(rig: Rig) -> None:
    deploy(rig, "v1")
    deploy(rig, "v2")
    deploy(rig, "v3")  # the blue slot holds v1 on standby: stopped, then v3 starts there
    assert rig.router.weights() == {"blue": 100}
    assert fallback(rig) == [("green", port_of(rig, "green"))]
    no_stop_while_fallback(rig)


def test_a_rollback_ends_the_fallback(rig: Rig) -> None:
    deploy(rig, "v1")
    deploy(rig, "v2")
    out: Outcome = run(rig.engine.rollback("dev", rig.emit))
    assert out.outcome == "succeeded", out.reason
    assert rig.router.weights() == {"blue": 100}
    assert fallback(rig) == []
    no_stop_while_fallback(rig)


def test_a_crash_in_the_bake_switches_back_and_ends_the_fallback(tmp_path: Path) -> None:
    rig = watched_rig(tmp_path, extra='\n[environments.dev.rollout]\nbake = "30s"\n')
    deploy(rig, "v1")

    async def scenario() -> Outcome:
        task = asyncio.create_task(rig.engine.deploy("dev", "v2", rig.emit))
        await until(lambda: rig.router.weights() == {"green": 100}, "the switch to green")
        assert fallback(rig) == [("blue", port_of(rig, "blue"))]
        rig.runtime.crash("v2")
        return await task

    out: Outcome = run(scenario())
    assert out.outcome == "rolled_back", out.reason
    assert rig.router.weights() == {"blue": 100} and fallback(rig) == []
    no_stop_while_fallback(rig)


def test_a_standby_whose_time_is_over_stops_being_the_fallback_first(tmp_path: Path) -> None:
    rig = watched_rig(tmp_path, extra='\n[environments.dev.rollout]\nstandby = "0s"\n')
    deploy(rig, "v1")
    deploy(rig, "v2")
    notes = run(rig.engine.supervise_once())
    assert any("stopped standby dev/web v1 (blue)" in n for n in notes), notes
    assert fallback(rig) == []
    no_stop_while_fallback(rig)


def test_a_standby_that_exited_stops_being_the_fallback(rig: Rig) -> None:
    deploy(rig, "v1")
    deploy(rig, "v2")
    rig.runtime.crash("v1")
    notes = run(rig.engine.supervise_once())
    assert any("standby dev/web v1 (blue) exited" in n for n in notes), notes
    assert fallback(rig) == []
    assert rig.router.weights() == {"green": 100}


def test_a_canary_falls_back_only_once_all_traffic_moved(tmp_path: Path) -> None:
    rig = watched_rig(tmp_path, extra=CANARY)
    deploy(rig, "v1")
    deploy(rig, "v2")
    splits = [s for s in rig.router.applied if s.route == "dev/web"]
    shared = [s for s in splits if len(s.backends) == 2]
    assert shared and all(s.fallback == () for s in shared)  # both colors take traffic
    assert fallback(rig) == [("blue", port_of(rig, "blue"))]


def test_a_router_without_the_feature_never_gets_a_fallback(tmp_path: Path) -> None:
    rig = watched_rig(tmp_path, features=FEATURES - {FALLBACK})
    deploy(rig, "v1")
    deploy(rig, "v2")
    assert rig.router.weights() == {"green": 100}
    assert all(s.fallback == () for s in rig.router.applied)


def new_agent(rig: Rig) -> Engine:
    """A new agent over the same state: its own engine, the same database, runtime and router."""
    return Engine(
        rig.dir,
        rig.engine.ctx.paths,
        rig.store,
        runtime=rig.runtime,
        router=rig.router,
        probe=rig.runtime.probe,
    )


def test_a_restarted_router_gets_its_fallback_back(rig: Rig) -> None:
    deploy(rig, "v1")
    deploy(rig, "v2")
    before = rig.router.splits["dev/web"]
    rig.router.restarted = True  # it lost its routes while the agent was away
    notes = run(new_agent(rig).recover())
    assert "started the proxy and restored its routes" in notes
    assert rig.router.splits["dev/web"] == before
    assert fallback(rig) == [("blue", port_of(rig, "blue"))]


def test_a_standby_started_again_by_a_new_agent_is_the_fallback_at_its_new_address(
    rig: Rig,
) -> None:
    deploy(rig, "v1")
    deploy(rig, "v2")
    old_port = port_of(rig, "blue")
    rig.runtime.crash("v1")  # gone while no agent watched
    notes = run(new_agent(rig).recover())
    assert any(n.startswith("restarted dev/web v1 (blue)") for n in notes), notes
    assert port_of(rig, "blue") != old_port
    assert fallback(rig) == [("blue", port_of(rig, "blue"))]


def test_a_standby_a_new_agent_finds_gone_and_expired_is_no_fallback(tmp_path: Path) -> None:
    rig = watched_rig(tmp_path, extra='\n[environments.dev.rollout]\nstandby = "0s"\n')
    deploy(rig, "v1")
    deploy(rig, "v2")
    rig.runtime.crash("v1")
    notes = run(new_agent(rig).recover())
    assert any("its standby time is over" in n for n in notes), notes
    assert fallback(rig) == []
