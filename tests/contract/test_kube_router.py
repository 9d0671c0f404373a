"""Contract tests: the Kubernetes routers ("kubernetes": a Service selector; "gateway-api": an
HTTPRoute's weights) against the in-process stand-in of the API server."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_schemas import validate
from kube_standin import KubeStandIn, serve

from conveyor.config import ResolvedEnvironment, load_config
from conveyor.routers.base import Backend, RouterError, Split
from conveyor.routers.kinds import PREVIEW, WEIGHTS
from conveyor.routers.kubernetes import KubernetesRouter
from conveyor.routers.registry import make_router

pytestmark = pytest.mark.contract
MERGE = "application/merge-patch+json"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeStandIn]:
    yield from serve(tmp_path)


def environment(
    tmp_path: Path, name: str = "dev", router: str = "kubernetes"
) -> ResolvedEnvironment:
    (tmp_path / "conveyor.toml").write_text(
        textwrap.dedent(
            f"""
            [app]
            name = "shop"
            [runtime]
            kind = "kubernetes"
            namespace = "shop"
            gateway = "infra/public"
            [router]
            kind = "{router}"
            [rollout]
            analysis = [{{ metric = "prometheus", query = "vector(0)", max = 1 }}]
            [services.web]
            image = "shop-web"
            port = 80
            preview_port = 8081
            container_port = 8000
            [environments.dev]
            [environments.staging]
            """
        )
    )
    return load_config(tmp_path / "conveyor.toml").environment(name)


def split(
    router: KubernetesRouter,
    env: ResolvedEnvironment,
    *weights: tuple[str, int],
    preview: bool = False,
) -> Split:
    backends = tuple(
        Backend(color, f"web-{color}.shop.svc", 8000, weight) for color, weight in weights
    )
    route = f"{env.name}/web" + (":preview" if preview else "")
    return Split(route, "127.0.0.1", 80, backends, options=router.options(env))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_blue_green_patches_the_services_selector(api: KubeStandIn, tmp_path: Path) -> None:
    router = make_router("kubernetes", None)  # type: ignore[arg-type]
    assert isinstance(router, KubernetesRouter)
    assert router.features == {PREVIEW}
    env = environment(tmp_path)

    async def scenario() -> None:
        await router.apply(split(router, env, ("blue", 100)))
        service = api.get("services", "shop", "web")
        assert service is not None
        validate({k: v for k, v in service.items() if k != "status"})
        assert service["spec"]["selector"]["conveyor.dev/color"] == "blue"
        assert service["spec"]["ports"][0] == {
            "name": "http",
            "port": 80,
            "targetPort": 8000,
            "protocol": "TCP",
        }
        # The preview Service reaches the new color before it takes traffic.
        await router.apply(split(router, env, ("green", 100), preview=True))
        preview = api.get("services", "shop", "web-preview")
        assert preview is not None and preview["spec"]["selector"]["conveyor.dev/color"] == "green"
        assert preview["spec"]["ports"][0]["port"] == 8081
        # The switch: a merge patch of the selector, nothing else.
        before = len(api.requests)
        await router.apply(split(router, env, ("green", 100)))
        writes = [r for r in api.requests[before:] if r[0] != "GET"]
        assert writes == [
            ("PATCH", "/api/v1/namespaces/shop/services/web?fieldManager=conveyor", MERGE)
        ]
        service = api.get("services", "shop", "web")
        assert service is not None and service["spec"]["selector"]["conveyor.dev/color"] == "green"
        await router.remove("dev/web:preview")
        assert api.get("services", "shop", "web-preview") is None
        assert await router.inflight("dev/web", "green") is None
        assert await router.counters("dev/web") is None
        assert await router.ensure() is False
        await router.shutdown()

    run(scenario())


def test_gateway_api_weighs_the_color_services(api: KubeStandIn, tmp_path: Path) -> None:
    router = make_router("gateway-api", None)  # type: ignore[arg-type]
    assert isinstance(router, KubernetesRouter)
    assert WEIGHTS in router.features
    env = environment(tmp_path, router="gateway-api")

    async def scenario() -> None:
        await router.apply(split(router, env, ("blue", 100)))
        await router.apply(split(router, env, ("green", 10), ("blue", 90)))
        route = api.get("httproutes", "shop", "web")
        assert route is not None
        validate({k: v for k, v in route.items() if k != "status"})
        refs = route["spec"]["rules"][0]["backendRefs"]
        assert [(r["name"], r["port"], r["weight"]) for r in refs] == [
            ("web-blue", 8000, 90),
            ("web-green", 8000, 10),
        ]
        assert route["spec"]["parentRefs"][0]["name"] == "public"
        # The plain Service stays on the color most traffic goes to.
        service = api.get("services", "shop", "web")
        assert service is not None and service["spec"]["selector"]["conveyor.dev/color"] == "blue"
        await router.apply(split(router, env, ("green", 100)))
        route = api.get("httproutes", "shop", "web")
        assert route is not None
        assert [(r["name"], r["weight"]) for r in route["spec"]["rules"][0]["backendRefs"]] == [
            ("web-green", 100)
        ]
        await router.remove("dev/web")
        assert api.get("httproutes", "shop", "web") is None
        assert api.get("services", "shop", "web") is None

    run(scenario())


def test_another_environments_service_is_refused(api: KubeStandIn, tmp_path: Path) -> None:
    router = KubernetesRouter()
    staging = environment(tmp_path, "staging")
    run(router.apply(split(router, staging, ("blue", 100))))
    dev = environment(tmp_path, "dev")
    with pytest.raises(RouterError, match=r"Service shop/web exists and is not conveyor's"):
        run(router.apply(split(router, dev, ("green", 100))))
    service = api.get("services", "shop", "web")
    assert service is not None
    assert service["metadata"]["labels"]["conveyor.dev/environment"] == "staging"
    assert service["spec"]["selector"]["conveyor.dev/color"] == "blue"


def test_an_api_error_is_a_router_error(tmp_path: Path) -> None:
    standins = serve(tmp_path, namespaces=("elsewhere",))
    next(standins)
    router = KubernetesRouter()
    env = environment(tmp_path)
    with pytest.raises(RouterError, match=r'namespaces "shop" not found'):
        run(router.apply(split(router, env, ("blue", 100))))
    standins.close()
