"""Contract tests: the Kubernetes runtime's API calls against the in-process stand-in of the API
server (tests/contract/kube_standin.py), through lightkube and a kubeconfig, as on a cluster."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kube_standin import KubeStandIn, serve

from conveyor.runtimes.base import Handle, RuntimeStartError, Workload
from conveyor.runtimes.kubernetes import KubernetesRuntime
from conveyor.runtimes.registry import Runtimes

pytestmark = pytest.mark.contract
SECRET = "pg-password-never-outside-the-secret"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeStandIn]:
    yield from serve(tmp_path)


def workload(version: str = "v1", color: str = "blue", **options: Any) -> Workload:
    opts: dict[str, Any] = {
        "image": "shop-web",
        "build": ".",
        "container_port": 8000,
        "replicas": 2,
        "resources": {"cpu": "100m"},
        "health": {"path": "/healthz", "interval": 0.1, "healthy_threshold": 1},
        "stop_timeout": 1.0,
        "runtime": {"kind": "kubernetes", "namespace": "shop", "context": None},
        **options,
    }
    return Workload(
        app="shop",
        environment="dev",
        service="web",
        color=color,
        version=version,
        artifact="/tmp/release",
        command="serve --port {port}",
        port=0,
        env={"LOG_LEVEL": "info", "DATABASE_PASSWORD": SECRET, "CONVEYOR_COLOR": color},
        options=opts,
    )


def secret_workload(**kw: Any) -> Workload:
    """A workload with the engine's `secrets` (the names among env whose values are secret)."""
    return replace(workload(**kw), secrets={"DATABASE_PASSWORD": SECRET})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_start_applies_the_colors_objects_and_its_readiness_is_the_health(
    api: KubeStandIn,
) -> None:
    runtime = KubernetesRuntime()
    handle = run(runtime.start(secret_workload()))
    assert handle.runtime == "kubernetes"
    assert handle.endpoints[0].host == "web-blue.shop.svc"
    assert handle.endpoints[0].port == 8000
    dep = api.get("deployments", "shop", "web-blue")
    assert dep is not None and dep["spec"]["replicas"] == 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "shop-web:v1"
    assert container["command"] == ["/bin/sh", "-c", "serve --port 8000"]
    assert SECRET not in json.dumps(dep)
    secret = api.get("secrets", "shop", "web-blue-secrets")
    assert secret is not None
    assert base64.b64decode(secret["data"]["DATABASE_PASSWORD"]).decode() == SECRET
    assert api.get("services", "shop", "web-blue") is not None
    # Every write was a server-side apply by conveyor's field manager.
    writes = [r for r in api.requests if r[0] != "GET"]
    assert {r[2] for r in writes} == {"application/apply-patch+yaml"}
    assert all("fieldManager=conveyor" in r[1] and "force=true" in r[1] for r in writes)

    state = run(runtime.state(handle))
    assert (state.alive, state.ready, state.detail) == (True, True, "2/2 replicas available")
    api.ready = lambda pod: False  # the readiness probe fails in the pods
    state = run(runtime.state(handle))
    assert (state.alive, state.ready, state.detail) == (True, False, "0/2 replicas available")
    assert run(runtime.exited(handle)) is None  # the engine polls state


def test_without_secrets_no_secret_is_made_and_values_stay_plain(api: KubeStandIn) -> None:
    run(KubernetesRuntime().start(workload()))
    assert api.get("secrets", "shop", "web-blue-secrets") is None
    env = api.get("deployments", "shop", "web-blue")["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]  # type: ignore[index]
    assert {"name": "LOG_LEVEL", "value": "info"} in env
    assert {"name": "PORT", "value": "8000"} in env


def test_adopt_finds_the_same_start_only(api: KubeStandIn) -> None:
    runtime = KubernetesRuntime()
    first = run(runtime.start(workload("v1")))
    # A restarted agent: a new runtime, the handle from the store.
    again = Handle.from_json(json.loads(json.dumps(first.to_json())))
    assert run(KubernetesRuntime().adopt(again)) == again
    second = run(runtime.start(workload("v2")))  # the color started again, for another release
    assert run(runtime.adopt(again)) is None
    assert run(runtime.state(again)).alive is False
    assert run(runtime.adopt(second)) == second
    assert run(Runtimes(Path("/nonexistent")).adopt(second)) == second  # by its kind


def test_stop_scales_to_zero_and_removes_the_secret(api: KubeStandIn) -> None:
    runtime = KubernetesRuntime()
    handle = run(runtime.start(secret_workload()))
    run(runtime.stop(handle, grace=1.0))
    dep = api.get("deployments", "shop", "web-blue")
    assert dep is not None and dep["spec"]["replicas"] == 0  # kept, empty, for the next start
    assert api.get("secrets", "shop", "web-blue-secrets") is None
    assert api.pods("shop") == []
    state = run(runtime.state(handle))
    assert (state.alive, state.detail) == (False, "scaled to zero")
    patch = ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web-blue?fieldManager=conveyor")
    assert (*patch, "application/merge-patch+json") in api.requests


def test_stop_forces_pods_that_outlive_the_grace(api: KubeStandIn) -> None:
    runtime = KubernetesRuntime()
    handle = run(runtime.start(workload()))
    api.slow_termination = True  # the app ignores SIGTERM: its pods stay Terminating
    run(runtime.stop(handle, grace=0.3))
    assert api.pods("shop") == []
    forced = [r for r in api.requests if r[0] == "DELETE" and "/pods/" in r[1]]
    assert len(forced) == 2 and all("gracePeriodSeconds=0" in r[1] for r in forced)


def test_stop_leaves_a_later_start_alone(api: KubeStandIn) -> None:
    runtime = KubernetesRuntime()
    old = run(runtime.start(workload("v1")))
    run(runtime.start(workload("v2")))
    run(runtime.stop(old, grace=1.0))
    dep = api.get("deployments", "shop", "web-blue")
    assert dep is not None and dep["spec"]["replicas"] == 2


def test_another_environments_deployment_is_never_taken_over(api: KubeStandIn) -> None:
    runtime = KubernetesRuntime()
    theirs = workload()
    run(runtime.start(theirs))
    mine = Workload(**{**theirs.__dict__, "environment": "staging"})
    before = len([r for r in api.requests if r[0] != "GET"])
    with pytest.raises(
        RuntimeStartError, match=r"Deployment shop/web-blue exists and is not conveyor.s for"
    ):
        run(runtime.start(mine))
    assert len([r for r in api.requests if r[0] != "GET"]) == before  # nothing applied


def test_api_errors_are_start_errors_naming_the_object(api: KubeStandIn) -> None:
    runtime = KubernetesRuntime()
    elsewhere = workload(runtime={"kind": "kubernetes", "namespace": "nowhere"})
    with pytest.raises(RuntimeStartError, match=r'404.*namespaces "nowhere" not found'):
        run(runtime.start(elsewhere))
    with pytest.raises(RuntimeStartError, match=r"services\.web\.image is needed"):
        run(runtime.start(workload(image=None)))


def test_logs_and_tail_read_the_pods(api: KubeStandIn) -> None:
    runtime = KubernetesRuntime()
    handle = run(runtime.start(workload(replicas=1)))
    (pod,) = api.pods("shop")
    name = pod["metadata"]["name"]
    api.logs[name].append("GET /healthz 200")
    assert runtime.tail(handle, 2) == [f"{name} listening", "GET /healthz 200"]

    async def follow() -> list[bytes]:
        got: list[bytes] = []
        async for chunk in runtime.logs(handle, follow=True):
            got.append(chunk)
            if len(got) == 3:
                api.logs[name].append("a line written later")
            if len(got) == 4:
                break
        return got

    got = run(asyncio.wait_for(follow(), timeout=10))
    assert got[-1] == b"a line written later\n"

    async def read_all() -> bytes:
        return b"".join([c async for c in runtime.logs(handle, follow=False)])

    assert b"GET /healthz 200\n" in run(read_all())


def test_unreachable_api_is_no_crash_and_not_ready(tmp_path: Path) -> None:
    standins = serve(tmp_path)
    api = next(standins)
    runtime = KubernetesRuntime()
    handle = run(runtime.start(workload()))
    api.__exit__(None, None, None)  # the API server goes away; the pods may well run on
    state = run(runtime.state(handle))
    assert (state.alive, state.ready) == (True, False)
    assert "could not read Deployment shop/web-blue" in state.detail
    standins.close()
