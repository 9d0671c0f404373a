"""The Swarm runtime on the single-node swarm of this Docker engine (never left, never pruned).

Services use the `host` network and listen on 127.0.0.1; every service and image is named with
the session's prefix and removed after.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dockerkit
import pytest
from test_docker_runtime import SECRET, answers, get, workload

from conftest import wait_for
from conveyor.runtimes.base import Handle, RuntimeStartError
from conveyor.runtimes.swarm import SwarmRuntime, health_check

PREFIX = dockerkit.PREFIX
docker_api = dockerkit.docker_api
busybox_image = dockerkit.busybox_image


@pytest.fixture
def runtime(tmp_path: Path, docker_api: Any) -> Iterator[SwarmRuntime]:
    dockerkit.swarm_active(docker_api)
    rt = SwarmRuntime(tmp_path, {"keep_images": 2})
    yield rt
    for svc in docker_api.services.list(filters={"label": f"io.conveyor.app={PREFIX}-shop"}):
        svc.remove()


def swarm_workload(image: str, **options: Any) -> Any:
    options.setdefault("health", {"path": "/healthz", "interval": 0.1, "timeout": 1.0})
    options.setdefault("stop_timeout", 2.0)
    return workload(image, **options)


def test_a_color_is_a_swarm_service_reached_on_its_tasks_node(
    runtime: SwarmRuntime, busybox_image: str, docker_api: Any
) -> None:
    w = swarm_workload(busybox_image)
    h = asyncio.run(runtime.start(w))
    assert h.runtime == "swarm" and h.endpoint is not None
    # The single node here advertises 127.0.0.1: the task's node address is the endpoint.
    assert h.endpoint.host == "127.0.0.1"
    wait_for(lambda: answers(h.endpoint.port), 60, "the service to answer")  # type: ignore[union-attr]
    assert get(h.endpoint.port) == (200, "hello from v1\n")
    spec = docker_api.services.get(str(h.ref["id"])).attrs["Spec"]
    assert spec["Labels"]["io.conveyor.color"] == "blue"
    assert spec["Mode"]["Replicated"]["Replicas"] == 1
    task = spec["TaskTemplate"]
    assert task["RestartPolicy"]["Condition"] == "on-failure"
    assert task["ContainerSpec"]["Healthcheck"]["Test"][0] == "CMD-SHELL"
    assert f"API_TOKEN={SECRET}" in task["ContainerSpec"]["Env"]
    assert SECRET not in " ".join(task["ContainerSpec"].get("Args") or [])
    assert [docker_api.networks.get(n["Target"]).name for n in task["Networks"]] == ["host"]
    wait_for(lambda: asyncio.run(runtime.state(h)).detail == "running", 60, "a running task")
    again = SwarmRuntime(Path("/nonexistent"))
    assert asyncio.run(again.adopt(Handle.from_json(h.to_json()))) == h
    other = Handle(h.runtime, {**h.ref, "instance": "someoneelse"}, h.endpoints, h.started_at)
    assert asyncio.run(again.adopt(other)) is None
    asyncio.run(again.stop(other, 0))
    assert docker_api.services.get(str(h.ref["id"]))
    asyncio.run(again.stop(h, 2))
    assert not docker_api.services.list(filters={"id": str(h.ref["id"])})
    assert not asyncio.run(again.state(h)).alive


def test_a_crash_is_restarted_by_swarm_then_told_by_exited(
    runtime: SwarmRuntime, busybox_image: str
) -> None:
    w = swarm_workload(busybox_image, command="sh -c 'echo crashing; exit 3'", port=None)
    h = asyncio.run(runtime.start(w))
    st = asyncio.run(asyncio.wait_for(runtime.exited(h), 90))
    assert st is not None and not st.alive and st.detail.startswith("exited with code 3")
    assert "crashing" in runtime.tail(h, 5)
    asyncio.run(runtime.stop(h, 0))


def test_an_image_that_is_not_there_creates_no_service(
    runtime: SwarmRuntime, docker_api: Any
) -> None:
    with pytest.raises(RuntimeStartError, match="is not on this Docker host"):
        asyncio.run(runtime.start(swarm_workload(f"{PREFIX}-missing:{uuid.uuid4().hex[:6]}")))
    assert not docker_api.services.list(filters={"label": f"io.conveyor.app={PREFIX}-shop"})


def test_the_health_check_follows_the_health_settings() -> None:
    w = swarm_workload("img", health={"path": "/up", "interval": 0.5, "timeout": 2.0})
    check = health_check(w, 8080)
    assert check is not None
    assert "http://127.0.0.1:8080/up" in check["test"][1]
    assert (check["interval"], check["timeout"]) == (500_000_000, 2_000_000_000)
    assert health_check(w, None) is None


def test_a_secret_the_service_prints_is_redacted_in_its_log_before_and_after_adoption(
    runtime: SwarmRuntime, busybox_image: str, tmp_path: Path
) -> None:
    script = "while true; do echo token=$API_TOKEN; sleep 0.2; done"
    w = swarm_workload(busybox_image, command=f'sh -c "{script}"', port=None)
    h = asyncio.run(runtime.start(replace(w, secrets={"API_TOKEN": SECRET})))
    log = tmp_path / "dev" / "web" / "blue.log"

    def redacted_line(path: Path) -> bool:
        return path.exists() and b"token=[secret:API_TOKEN]" in path.read_bytes()

    wait_for(lambda: redacted_line(log), 60, "a redacted line in the log")
    elsewhere = tmp_path / "again"
    again = SwarmRuntime(elsewhere)
    assert asyncio.run(again.adopt(Handle.from_json(h.to_json()))) == h
    wait_for(lambda: redacted_line(elsewhere / "dev" / "web" / "blue.log"), 60, "after adoption")
    asyncio.run(again.stop(h, 2))
    for path in (log, elsewhere / "dev" / "web" / "blue.log"):
        assert SECRET.encode() not in path.read_bytes()
