"""End to end on a real Kubernetes cluster: skipped unless KUBECONFIG points at one that answers.

    KUBECONFIG=~/.kube/kind-config CONVEYOR_E2E_NAMESPACE=conveyor-e2e \
        .venv/bin/python -m pytest tests/e2e_kubernetes -m kubernetes

Two colors of a busybox httpd (CONVEYOR_E2E_IMAGE, pulled by the cluster) become ready through
their readiness probes, the Service switches from one to the other by its selector, the old
color is scaled to zero, and everything the test made is deleted. No cluster can run on the
machine conveyor is developed on, so there it is skipped (the contract tests in tests/contract
cover the API calls against a stand-in).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import pytest

from conveyor.kube import manifests as m
from conveyor.kube.client import Kube, KubeError
from conveyor.routers.base import Backend, Split
from conveyor.routers.kubernetes import KubernetesRouter
from conveyor.runtimes.base import Handle, Workload
from conveyor.runtimes.kubernetes import KubernetesRuntime

pytestmark = pytest.mark.kubernetes
NAMESPACE = os.environ.get("CONVEYOR_E2E_NAMESPACE", "default")
IMAGE = os.environ.get("CONVEYOR_E2E_IMAGE", "busybox:1.36")
SERVE = "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p {port} -h /www"


def cluster_or_skip() -> None:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("KUBECONFIG is not set: no Kubernetes cluster to deploy to")

    async def ask() -> None:
        kube = Kube("default", timeout=5.0)
        try:
            await kube.get("Service", "kubernetes")
        finally:
            await kube.close()

    try:
        asyncio.run(ask())
    except KubeError as exc:
        pytest.skip(f"the cluster of KUBECONFIG does not answer: {exc}")


def workload(service: str, color: str, version: str) -> Workload:
    return Workload(
        app="e2e",
        environment="e2e",
        service=service,
        color=color,
        version=version,
        artifact="",
        command=SERVE,
        port=0,
        env={"CONVEYOR_COLOR": color},
        options={
            "image": IMAGE,
            "container_port": 8080,
            "replicas": 1,
            "health": {"path": "/healthz", "interval": 1.0},
            "stop_timeout": 5.0,
            "runtime": {"kind": "kubernetes", "namespace": NAMESPACE},
        },
    )


async def ready(runtime: KubernetesRuntime, handle: Handle, within: float = 180.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = await runtime.state(handle)
        assert state.alive, state.detail
        if state.ready:
            return
        await asyncio.sleep(1.0)
    raise AssertionError(f"{handle.ref['name']} not ready within {within}s")


def test_blue_green_on_a_real_cluster() -> None:
    cluster_or_skip()
    service = f"e2e-{uuid.uuid4().hex[:8]}"
    runtime, router = KubernetesRuntime(), KubernetesRouter()
    route = m.Route("e2e", "e2e", service, NAMESPACE, 80, 8080)
    options: dict[str, Any] = {"context": "", "services": {service: route.__dict__}}

    def split(color: str) -> Split:
        return Split(f"e2e/{service}", "", 80, (Backend(color, "", 8080),), options=options)

    async def scenario() -> None:
        kube = Kube(NAMESPACE)
        try:
            blue = await runtime.start(workload(service, "blue", "v1"))
            await ready(runtime, blue)
            await router.apply(split("blue"))
            green = await runtime.start(workload(service, "green", "v2"))
            await ready(runtime, green)
            await router.apply(split("green"))
            live = await kube.get("Service", service)
            assert live is not None and live["spec"]["selector"][m.COLOR] == "green"
            await runtime.stop(blue, grace=10.0)
            assert (await runtime.state(blue)).alive is False
            assert (await runtime.state(green)).ready is True
        finally:
            await router.remove(f"e2e/{service}")
            for color in ("blue", "green"):
                for kind in ("Deployment", "Service"):
                    await kube.delete(kind, m.color_name(service, color))
            await kube.close()
            await runtime.close()

    asyncio.run(scenario())
