"""The Docker runtime on the real Docker engine: containers of a busybox image made here.

Host networking only, on 127.0.0.1 (bridge mode is checked on the container's port binding, with
no traffic). Every container and image is named with the session's prefix and removed after.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import dockerkit
import pytest

from conftest import wait_for
from conveyor.markers import INSTANCE_ID, PROJECT_ID
from conveyor.runtimes.base import Handle, RunState, RuntimeStartError, Workload
from conveyor.runtimes.docker import DockerRuntime
from conveyor.runtimes.logfile import tail_lines

PREFIX = dockerkit.PREFIX
# The session's Docker client and busybox image (fixtures).
docker_api = dockerkit.docker_api
busybox_image = dockerkit.busybox_image

SECRET = "s3cr3t-value-never-in-argv"


def workload(image: str, color: str = "blue", **options: Any) -> Workload:
    return Workload(
        app=f"{PREFIX}-shop",
        environment="dev",
        service="web",
        color=color,
        version="v1",
        artifact="/nonexistent/release",
        command=options.pop("command", None),
        port=options.pop("port", 0),
        env={
            "CONVEYOR_VERSION": "v1",
            "API_TOKEN": SECRET,
            PROJECT_ID: "p" + uuid.uuid4().hex[:8],
            INSTANCE_ID: uuid.uuid4().hex[:12],
        },
        options={"image": image, "image_id": image, "network": "host", **options},
    )


def get(port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def answers(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


@pytest.fixture
def runtime(tmp_path: Path, docker_api: Any) -> Any:
    rt = DockerRuntime(tmp_path, {"keep_images": 2})
    yield rt
    # Whatever a failed test left: this test's containers only (labelled with its app).
    for c in docker_api.containers.list(
        all=True, filters={"label": f"io.conveyor.app={PREFIX}-shop"}
    ):
        c.remove(force=True)


def test_start_serves_on_the_given_port_with_labels_and_env_through_the_api(
    runtime: DockerRuntime,
    busybox_image: str,
    docker_api: Any,
) -> None:
    w = workload(busybox_image)
    h = asyncio.run(runtime.start(w))
    assert h.runtime == "docker" and h.endpoint is not None and h.endpoint.host == "127.0.0.1"
    wait_for(lambda: answers(h.endpoint.port), 30, "the container to answer")
    assert get(h.endpoint.port) == (200, "hello from v1\n")
    c = docker_api.containers.get(str(h.ref["id"]))
    assert c.labels["io.conveyor.project"] == w.env[PROJECT_ID]
    assert c.labels["io.conveyor.color"] == "blue" and c.labels["io.conveyor.version"] == "v1"
    env = c.attrs["Config"]["Env"]
    assert f"API_TOKEN={SECRET}" in env and f"PORT={h.endpoint.port}" in env
    # The project marker is a label, not in /proc/<pid>/environ (the orphan scan reads that).
    assert not any(e.startswith(PROJECT_ID) for e in env)
    argv = " ".join([c.attrs["Path"], *c.attrs["Args"]])
    assert SECRET not in argv and SECRET not in str(c.labels)
    assert c.attrs["HostConfig"]["NetworkMode"] == "host"
    assert asyncio.run(runtime.state(h)) == RunState(True, "running")
    asyncio.run(runtime.stop(h, 1))
    assert not docker_api.containers.list(all=True, filters={"id": str(h.ref["id"])})


def test_a_new_runtime_adopts_its_container_and_never_a_stranger(
    runtime: DockerRuntime,
    busybox_image: str,
    docker_api: Any,
    tmp_path: Path,
) -> None:
    h = asyncio.run(runtime.start(workload(busybox_image)))
    again = DockerRuntime(tmp_path)
    assert asyncio.run(again.adopt(Handle.from_json(h.to_json()))) == h
    # The same container id with another start's labels is not ours to adopt or stop.
    other = Handle(h.runtime, {**h.ref, "instance": "someoneelse"}, h.endpoints, h.started_at)
    assert asyncio.run(again.adopt(other)) is None
    asyncio.run(again.stop(other, 0))
    assert docker_api.containers.get(str(h.ref["id"])).status == "running"
    # A stranger: a container without our labels, named by a forged handle.
    stranger = docker_api.containers.run(
        busybox_image, ["sleep", "30"], detach=True, name=f"{PREFIX}-stranger", network_mode="none"
    )
    forged = Handle("docker", {**h.ref, "id": stranger.id}, (), 0.0)
    assert asyncio.run(again.adopt(forged)) is None
    asyncio.run(again.stop(forged, 0))
    assert docker_api.containers.get(stranger.id).status == "running"
    stranger.remove(force=True)
    asyncio.run(again.stop(h, 1))
    assert asyncio.run(again.adopt(h)) is None


def test_exited_tells_a_kill_when_it_happens(
    runtime: DockerRuntime,
    busybox_image: str,
    docker_api: Any,
) -> None:
    h = asyncio.run(runtime.start(workload(busybox_image)))
    wait_for(lambda: answers(h.endpoint.port), 30, "the container to answer")  # type: ignore[union-attr]

    async def kill_and_wait() -> RunState | None:
        waiting = asyncio.create_task(runtime.exited(h))
        await asyncio.sleep(0)
        assert not waiting.done()
        await asyncio.to_thread(docker_api.containers.get(str(h.ref["id"])).kill)
        return await asyncio.wait_for(waiting, 30)

    st = asyncio.run(kill_and_wait())
    assert st is not None and not st.alive
    assert st.detail == "killed by SIGKILL" and st.ended_at is not None
    assert asyncio.run(runtime.state(h)).detail == "killed by SIGKILL"
    asyncio.run(runtime.stop(h, 0))


def test_stop_sends_the_stop_signal_and_waits_the_grace_period(
    runtime: DockerRuntime,
    busybox_image: str,
    docker_api: Any,
) -> None:
    # The app says goodbye on SIGUSR1 only: it ends with code 0 only if stop_signal was sent.
    script = "trap 'echo bye on usr1; exit 0' USR1; echo started; while true; do sleep 0.1; done"
    w = workload(busybox_image, command=f'sh -c "{script}"', port=None, stop_signal="USR1")
    h = asyncio.run(runtime.start(w))
    wait_for(lambda: "started" in "".join(runtime.tail(h, 5)), 30, "the app's first line")
    container = docker_api.containers.get(str(h.ref["id"]))
    assert container.attrs["Config"]["StopSignal"] == "SIGUSR1"
    asyncio.run(runtime.stop(h, 20))  # well within the grace: SIGKILL is never needed
    assert asyncio.run(runtime.state(h)).alive is False
    with pytest.raises(Exception, match=r"No such container|404"):
        docker_api.containers.get(str(h.ref["id"]))


def test_logs_and_tail_read_the_containers_output(
    runtime: DockerRuntime,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    script = "for i in 1 2 3; do echo line $i; done; echo oops >&2; sleep 30"
    h = asyncio.run(runtime.start(workload(busybox_image, command=f'sh -c "{script}"', port=None)))
    # Docker orders stdout and stderr lines by when it read them: only each stream keeps order.
    wait_for(lambda: sorted(runtime.tail(h, 10)) == ["line 1", "line 2", "line 3", "oops"], 30)
    assert len(runtime.tail(h, 2)) == 2

    async def read(follow: bool) -> bytes:
        out = b""
        async for chunk in runtime.logs(h, follow):
            out += chunk
            if follow and b"oops" in out:
                break
        return out

    # Stdout alone keeps its order; Docker may put the stderr line anywhere between.
    whole = asyncio.run(read(False)).splitlines()
    assert [line for line in whole if line != b"oops"] == [b"line 1", b"line 2", b"line 3"]
    assert b"oops" in whole
    assert b"oops" in asyncio.run(asyncio.wait_for(read(True), 30))
    # `conveyor logs` reads the color's log file: the output is copied there, stream by stream.
    log = tmp_path / "dev" / "web" / "blue.log"

    def copied() -> list[tuple[str | None, str]]:
        return [(line.stream, line.text) for line in tail_lines(log, 10)]

    wait_for(lambda: ("stderr", "oops") in copied() and ("stdout", "line 3") in copied(), 30)
    assert copied()[0][0] == "conveyor" and "start web blue v1" in copied()[0][1]
    asyncio.run(runtime.stop(h, 0))


def test_an_image_that_is_not_there_fails_the_start_and_creates_nothing(
    runtime: DockerRuntime,
    docker_api: Any,
) -> None:
    w = workload(f"{PREFIX}-missing:v1")
    with pytest.raises(RuntimeStartError, match="is not on this Docker host"):
        asyncio.run(runtime.start(w))
    assert not docker_api.containers.list(
        all=True, filters={"label": f"io.conveyor.app={PREFIX}-shop"}
    )


def test_bridge_publishes_the_container_port_on_loopback(
    runtime: DockerRuntime,
    busybox_image: str,
    docker_api: Any,
) -> None:
    w = workload(busybox_image, network="bridge", container_port=8000)
    with pytest.raises(RuntimeStartError, match="container_port"):
        asyncio.run(runtime.start(workload(busybox_image, network="bridge")))
    h = asyncio.run(runtime.start(w))
    c = docker_api.containers.get(str(h.ref["id"]))
    binding = c.attrs["HostConfig"]["PortBindings"]["8000/tcp"][0]
    assert h.endpoint is not None
    assert binding == {"HostIp": "127.0.0.1", "HostPort": str(h.endpoint.port)}
    assert "PORT=8000" in c.attrs["Config"]["Env"]
    asyncio.run(runtime.stop(h, 0))


def _labelled_image(docker_api: Any, base: str, version: str) -> str:
    dockerfile = f"FROM {base}\nLABEL io.conveyor.app={PREFIX}-shop io.conveyor.service=web "
    dockerfile += f"io.conveyor.version={version}\n"
    image, _ = docker_api.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=f"{PREFIX}-shop-web:{version}", rm=True
    )
    return str(image.id)


def test_stopping_a_color_prunes_older_images_but_keeps_the_newest_and_those_in_use(
    runtime: DockerRuntime,
    busybox_image: str,
    docker_api: Any,
) -> None:
    ids = [_labelled_image(docker_api, busybox_image, f"v{i}") for i in range(1, 5)]
    # v1 runs (a rollback target still in use); v4 is stopped, which prunes.
    running = asyncio.run(runtime.start(workload(ids[0])))
    stopped = asyncio.run(runtime.start(workload(ids[3], color="green")))
    asyncio.run(runtime.stop(stopped, 0))
    left = {
        img.id
        for img in docker_api.images.list(filters={"label": f"io.conveyor.app={PREFIX}-shop"})
    }
    # keep_images = 2: v4 and v3 stay, v2 goes, v1 stays because a container uses it.
    assert left == {ids[0], ids[2], ids[3]}
    asyncio.run(runtime.stop(running, 0))
    left = {
        img.id
        for img in docker_api.images.list(filters={"label": f"io.conveyor.app={PREFIX}-shop"})
    }
    assert left == {ids[2], ids[3]}


def test_a_secret_the_app_prints_is_redacted_in_its_log_file_before_and_after_adoption(
    runtime: DockerRuntime,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    script = "while true; do echo token=$API_TOKEN; sleep 0.2; done"
    w = workload(busybox_image, command=f'sh -c "{script}"', port=None)
    h = asyncio.run(runtime.start(replace(w, secrets={"API_TOKEN": SECRET})))
    log = tmp_path / "dev" / "web" / "blue.log"

    def redacted_line(path: Path) -> bool:
        return path.exists() and b"token=[secret:API_TOKEN]" in path.read_bytes()

    wait_for(lambda: redacted_line(log), 30)
    # A restarted agent knows the secret's name from the label and its value from the env.
    elsewhere = tmp_path / "again"
    again = DockerRuntime(elsewhere)
    assert asyncio.run(again.adopt(Handle.from_json(h.to_json()))) == h
    wait_for(lambda: redacted_line(elsewhere / "dev" / "web" / "blue.log"), 30)
    asyncio.run(again.stop(h, 0))
    for path in (log, elsewhere / "dev" / "web" / "blue.log"):
        assert SECRET.encode() not in path.read_bytes()
