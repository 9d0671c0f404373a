"""Contract test: the RBAC Role in docs/kubernetes.md allows every API call conveyor makes.

The runtime and both routers run their whole repertoire against the stand-in (start, state,
adopt, a stop that has to force pods, logs, tail, switch, preview, canary weights, remove), and
each recorded request is checked against the documented Role's rules."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kube_standin import PATHS, KubeStandIn, serve
from test_kube_router import environment, split
from test_kube_runtime import secret_workload

from conveyor.routers.kubernetes import KubernetesRouter
from conveyor.runtimes.kubernetes import KubernetesRuntime

pytestmark = pytest.mark.contract
DOC = Path(__file__).parents[2] / "docs" / "kubernetes.md"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeStandIn]:
    yield from serve(tmp_path)


def documented_role() -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, from the Role in the documentation."""
    text = DOC.read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kind: Role" in b)
    role = yaml.safe_load(block)
    allowed: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                allowed.setdefault((group, resource), set()).update(rule["verbs"])
    return allowed


def needed(method: str, path: str, ctype: str) -> tuple[tuple[str, str], frozenset[str]]:
    match = PATHS.match(urlsplit(path).path)
    assert match is not None, path
    resource = match["plural"] + ("/log" if match["sub"] else "")
    group = match["group"] or ""
    if method == "GET":
        verbs = ["get"] if match["name"] else ["list"]
    elif method == "DELETE":
        verbs = ["delete"]
    elif ctype == "application/apply-patch+yaml":
        verbs = ["patch", "create"]  # server-side apply creates what is not there yet
    else:
        verbs = ["patch"]
    return (group, resource), frozenset(verbs)


def test_the_documented_role_allows_every_call(api: KubeStandIn, tmp_path: Path) -> None:
    async def everything() -> None:
        runtime = KubernetesRuntime()
        blue = await runtime.start(secret_workload())
        green = await runtime.start(secret_workload(color="green", version="v2"))
        await runtime.state(blue)
        await runtime.adopt(blue)
        runtime.tail(blue, 5)
        async for _ in runtime.logs(blue, follow=False):
            pass
        for gateway in (False, True):
            router = KubernetesRouter(gateway=gateway)
            env = environment(tmp_path, router="gateway-api" if gateway else "kubernetes")
            await router.apply(split(router, env, ("blue", 100)))
            await router.apply(split(router, env, ("green", 100), preview=True))
            await router.apply(split(router, env, ("green", 10), ("blue", 90)))
            await router.apply(split(router, env, ("green", 100)))
            await router.remove("dev/web:preview")
            await router.remove("dev/web")
        api.slow_termination = True
        await runtime.stop(blue, grace=0.2)
        await runtime.stop(green, grace=0.2)
        await runtime.close()

    asyncio.run(everything())
    allowed = documented_role()
    calls = {needed(*request) for request in api.requests}
    seen = {what for what, _ in calls}
    assert {
        ("apps", "deployments"),
        ("", "pods/log"),
        ("gateway.networking.k8s.io", "httproutes"),
    } <= seen
    for what, verbs in calls:
        assert verbs <= allowed.get(what, set()), f"the Role lacks {verbs} on {what}"
