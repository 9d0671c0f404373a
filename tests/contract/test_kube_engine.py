"""Contract test: the engine deploys, switches and rolls back on "Kubernetes" (the stand-in of the
API server), through the registry's Kubernetes runtime and the Service-selector router, with the
Deployments' readiness as the health check and no request sent to a pod."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kube_standin import KubeStandIn, serve

from conveyor.engine.engine import Engine
from conveyor.paths import Paths
from conveyor.ports import free_port
from conveyor.releases import ReleaseStore
from conveyor.routers.kubernetes import KubernetesRouter
from conveyor.runtimes.base import Endpoint
from conveyor.store.db import Store

pytestmark = pytest.mark.contract

CONFIG = """
[app]
name = "shop"
[runtime]
kind = "kubernetes"
namespace = "shop"
[router]
kind = "kubernetes"
[services.web]
image = "shop-web"
build = "."
port = {port}
container_port = 8000
replicas = 2
health = {{ interval = "20ms", healthy_threshold = 2, unhealthy_threshold = 2, start_timeout = "{start}" }}
stop_timeout = "1s"
[rollout]
bake = "200ms"
drain_timeout = "100ms"
standby = "10m"
on_inconclusive = "pass"
"""


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeStandIn]:
    yield from serve(tmp_path)


def selected(api: KubeStandIn) -> tuple[str, str]:
    """(color, version) the Service `web` sends traffic to."""
    service = api.get("services", "shop", "web")
    assert service is not None
    color = service["spec"]["selector"]["conveyor.dev/color"]
    dep = api.get("deployments", "shop", f"web-{color}")
    assert dep is not None
    return color, dep["spec"]["template"]["metadata"]["labels"]["conveyor.dev/version"]


def test_deploy_switch_rollback_and_a_release_that_never_gets_ready(
    api: KubeStandIn, tmp_path: Path
) -> None:
    port = free_port("127.0.0.1")
    # The first start loads the Kubernetes client: generous on a loaded machine.
    (tmp_path / "conveyor.toml").write_text(CONFIG.format(port=port, start="30s"))
    paths = Paths(tmp_path / ".conveyor")
    paths.ensure()
    store = Store.open("sqlite://")
    probed: list[Endpoint] = []

    async def probe(endpoint: Endpoint, health: Any) -> tuple[bool, str]:
        probed.append(endpoint)  # never: the cluster's readiness is the health check
        return False, "no"

    engine = Engine(tmp_path, paths, store, router=KubernetesRouter(), probe=probe)
    src = tmp_path / "src"
    src.mkdir()
    for version in ("v1", "v2", "v3"):
        (src / "VERSION").write_text(version)
        ReleaseStore(paths.home, store, "shop").create(src, version, datetime.now(UTC))
    api.ready = lambda pod: pod["metadata"]["labels"]["conveyor.dev/version"] != "v3"
    events: list[dict[str, Any]] = []

    async def scenario() -> None:
        first = await engine.deploy("dev", "v1", events.append)
        assert first.outcome == "succeeded", first.reason
        assert selected(api) == ("blue", "v1")
        second = await engine.deploy("dev", "v2", events.append)
        assert second.outcome == "succeeded", second.reason
        assert selected(api) == ("green", "v2")
        standby = api.get("deployments", "shop", "web-blue")
        assert standby is not None and standby["status"]["availableReplicas"] == 2
        back = await engine.rollback("dev", events.append)
        assert back.outcome == "succeeded", back.reason
        assert selected(api) == ("blue", "v1")
        (tmp_path / "conveyor.toml").write_text(CONFIG.format(port=port, start="2s"))
        bad = await engine.deploy("dev", "v3", events.append)
        assert bad.outcome == "failed"
        assert "not healthy" in bad.reason and "0/2 replicas available" in bad.reason
        assert selected(api) == ("blue", "v1")
        await engine.ctx.traffic.router.shutdown()

    asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert probed == []
    store.close()
