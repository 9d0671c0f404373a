"""End to end with [runtime] kind = "swarm" on this engine's single-node swarm: each color a Swarm
service on the host network, blue/green under load at conveyor's router, then a rollback."""

from __future__ import annotations

from typing import Any

import dockerkit
import pytest
import test_docker_deploy
from test_docker_deploy import ContainerProject, blue_green_under_load_then_rollback

docker_api = dockerkit.docker_api
busybox_image = dockerkit.busybox_image
container_project = test_docker_deploy.container_project


@pytest.mark.parametrize("container_project", ["swarm"], indirect=True)
def test_swarm_blue_green_under_load_then_rollback(
    container_project: ContainerProject, docker_api: Any
) -> None:
    blue_green_under_load_then_rollback(container_project, docker_api)
