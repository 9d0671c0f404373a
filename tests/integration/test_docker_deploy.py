"""End to end with [runtime] kind = "docker": release images built from the snapshot, blue/green
under load through the real CLI, agent and proxy, rollback, and a missing image refused before
anything stops. The containers use host networking and listen on 127.0.0.1.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import dockerkit
import pytest

from conftest import Project, temp_project, wait_for
from conveyor.loadgen import LoadGenerator

PREFIX = dockerkit.PREFIX
docker_api = dockerkit.docker_api
busybox_image = dockerkit.busybox_image

CONFIG = """\
[app]
name = "{app}"

[runtime]
kind = "{kind}"
keep_images = 2

[services.web]
image = "{image}"
build = "."
network = "host"
port = {port}
stop_timeout = "3s"

[services.web.health]
path = "/healthz"
interval = "100ms"
timeout = "1s"
healthy_threshold = 2
start_timeout = "60s"

[rollout]
standby = "60s"
drain_timeout = "2s"
bake = "0s"

[environments.dev]
"""


class ContainerProject:
    """A project whose web service is an image built from its own Dockerfile."""

    def __init__(self, project: Project, kind: str, base_image: str) -> None:
        self.p = project
        self.kind = kind
        # Not the temporary directory's name: it may hold "_", and "-_" is no valid image name.
        suffix = uuid.uuid4().hex[:6]
        self.app = f"{PREFIX}-{kind}-{suffix}"
        self.image = f"{PREFIX}-{kind}-{suffix}-web"
        (project.dir / "Dockerfile").write_text(
            f"FROM {base_image}\nCOPY version.txt /www/version.txt\n"
        )
        (project.dir / "conveyor.toml").write_text(
            CONFIG.format(app=self.app, kind=kind, image=self.image, port=project.port)
        )

    def release(self, version: str) -> dict[str, Any]:
        (self.p.dir / "version.txt").write_text(version)
        code, out = self.p.json("release", "create", "--version", version)
        assert code == 0, out
        return dict(out)


@pytest.fixture
def container_project(
    request: pytest.FixtureRequest, docker_api: Any, busybox_image: str
) -> Iterator[ContainerProject]:
    kind = getattr(request, "param", "docker")
    if kind == "swarm":
        dockerkit.swarm_active(docker_api)
    with temp_project() as project:
        cp = ContainerProject(project, kind, busybox_image)
        try:
            yield cp
        finally:
            project.cli("agent", "stop", "--yes", timeout=120)
            dockerkit.remove_prefixed(docker_api, cp.app)
            dockerkit.remove_prefixed(docker_api, cp.image)


def blue_green_under_load_then_rollback(cp: ContainerProject, docker_api: Any) -> None:
    project = cp.p
    v1 = cp.release("v1")
    image = v1["images"]["web"]
    assert image["image"] == f"{cp.image}:v1" and image["built"] is True
    assert docker_api.images.get(f"{cp.image}:v1").id == image["id"]
    code, out = project.deploy("v1")
    assert code == 0, out
    assert project.get() == (200, "hello from v1\n", "v1")
    logs = project.cli("logs", "web", "--env", "dev")
    assert logs.returncode == 0 and "start web" in logs.stdout, logs

    cp.release("v2")
    code, listed = project.json("releases")
    assert code == 0
    assert {r["version"]: r["images"]["web"]["image"] for r in listed} == {
        "v1": f"{cp.image}:v1",
        "v2": f"{cp.image}:v2",
    }
    load = LoadGenerator("127.0.0.1", project.port, connections=8, max_seconds=120).start()
    wait_for(lambda: load.snapshot()[0] > 50, what="traffic before the switch")
    code, out = project.deploy("v2")
    assert code == 0, out
    wait_for(lambda: project.serving() == "v2", what="v2 serving")
    code, status = project.json("status", "--env", "dev")
    assert code == 0
    web = status["services"][0]
    assert web["active"]["version"] == "v2" and web["standby"]["version"] == "v1"

    code, out = project.json("rollback", "--env", "dev")
    assert code == 0, out
    wait_for(lambda: project.serving() == "v1", what="v1 serving again")
    after = load.versions()["v1"]
    wait_for(lambda: load.versions()["v1"] > after + 50, what="load served by v1")
    result = load.stop()
    assert result.failed == 0, (result.statuses, result.error_samples)
    assert result.versions["v2"] > 0

    # What runs is the image recorded with the release, labelled as conveyor's.
    labels = {"label": f"io.conveyor.app={cp.app}"}
    if cp.kind == "docker":
        objects = [(c.labels, c.image.id) for c in docker_api.containers.list(filters=labels)]
    else:
        objects = [
            (s.attrs["Spec"]["Labels"], s.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])
            for s in docker_api.services.list(filters=labels)
        ]
    running = {found["io.conveyor.version"]: image_id for found, image_id in objects}
    assert running["v1"] == image["id"]
    # Each is labelled with the deployment that started it.
    code, history = project.history("dev")
    assert code == 0, history
    started_by = {d["version"]: str(d["id"]) for d in history if d["kind"] == "deploy"}
    for found, _ in objects:
        assert found["io.conveyor.deployment"] == started_by[found["io.conveyor.version"]]


@pytest.mark.parametrize("container_project", ["docker"], indirect=True)
def test_docker_blue_green_under_load_then_rollback(
    container_project: ContainerProject, docker_api: Any
) -> None:
    blue_green_under_load_then_rollback(container_project, docker_api)


@pytest.mark.parametrize("container_project", ["docker"], indirect=True)
def test_a_release_whose_image_is_gone_fails_the_deploy_before_anything_stops(
    container_project: ContainerProject, docker_api: Any
) -> None:
    cp = container_project
    cp.release("v1")
    code, out = cp.p.deploy("v1")
    assert code == 0, out
    cp.release("v2")
    docker_api.images.remove(f"{cp.image}:v2")
    code, out = cp.p.deploy("v2")
    assert code != 0
    assert "is not on this Docker host" in str(out), out
    assert cp.p.get() == (200, "hello from v1\n", "v1")


@pytest.mark.parametrize("container_project", ["docker"], indirect=True)
def test_a_failed_build_records_no_release(container_project: ContainerProject) -> None:
    cp = container_project
    (cp.p.dir / "Dockerfile").write_text("FROM scratch\nCOPY missing.txt /nowhere\n")
    (cp.p.dir / "version.txt").write_text("v1")
    proc = cp.p.cli("release", "create", "--version", "v1")
    assert proc.returncode != 0
    assert "building" in proc.stderr and "failed" in proc.stderr, proc.stderr
    code, listed = cp.p.json("releases")
    assert code == 0 and listed == []
