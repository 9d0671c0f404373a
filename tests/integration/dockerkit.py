"""A test image made here, with no registry: the static busybox packed with `docker import`.

It serves HTTP with `busybox httpd` on 127.0.0.1 (host networking only, in tests): /healthz is a
static file, / is a CGI script that answers with the color's version in X-Demo-Version (what
conveyor.loadgen counts). Every object a test makes is named with PREFIX and removed after.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import unavailable

# One per test session (and per xdist worker): names that no one else's objects have.
PREFIX = f"cvtest-{uuid.uuid4().hex[:8]}"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "httpd", "sleep", "echo", "cat", "kill", "env", "ls", "true", "false")

INDEX_CGI = """#!/bin/sh
version=$(cat /www/version.txt 2>/dev/null || echo "$CONVEYOR_VERSION")
printf 'X-Demo-Version: %s\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello from %s\\n' \\
  "$version" "$version"
"""
# The image's own command: serve on the port conveyor gives (host networking), and end at once
# on SIGTERM (a PID 1 without a handler would ignore it until the grace period is over).
SERVE = "httpd -f -p 127.0.0.1:$PORT -h /www & trap 'kill $!; exit 0' TERM; wait"


def docker_client() -> Any:
    """The Docker engine here, or a skip (a failure under CI=true) saying why not."""
    try:
        import docker
    except ImportError:
        unavailable("the docker SDK is not installed (pip install 'conveyor[docker]')")
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        unavailable(f"no Docker engine: {exc}")
    return client


def swarm_active(client: Any) -> None:
    state = client.info().get("Swarm", {}).get("LocalNodeState")
    if state != "active":
        unavailable(f"this Docker engine is not in a swarm (state {state!r})")


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o1777 if name == "tmp" else 0o755
    tar.addfile(info)


def busybox_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "www", "www/cgi-bin"):
            _dir(tar, d)
        with open(BUSYBOX, "rb") as f:
            _add(tar, "bin/busybox", f.read(), 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        _add(tar, "www/healthz", b"ok\n")
        _add(tar, "www/cgi-bin/index.cgi", INDEX_CGI.encode(), 0o755)
    return buf.getvalue()


def import_busybox(client: Any, repository: str, tag: str = "base") -> str:
    """Import the busybox image as repository:tag; its id."""
    if not os.path.exists(BUSYBOX):
        unavailable(f"{BUSYBOX} is missing (Debian package busybox-static)")
    client.api.import_image_from_data(
        busybox_tar(),
        repository=repository,
        tag=tag,
        changes=["ENV PATH=/bin", f'CMD ["/bin/sh", "-c", "{SERVE}"]'],
    )
    return str(client.images.get(f"{repository}:{tag}").id)


def remove_prefixed(client: Any, prefix: str = PREFIX) -> None:
    """Remove every container, service and image whose name starts with the prefix."""
    import docker

    with contextlib.suppress(docker.errors.DockerException):
        for svc in client.services.list():
            if svc.name.startswith(prefix) or svc.attrs["Spec"].get("Labels", {}).get(
                "io.conveyor.app", ""
            ).startswith(prefix):
                with contextlib.suppress(docker.errors.NotFound):
                    svc.remove()
    with contextlib.suppress(docker.errors.DockerException):
        for c in client.containers.list(all=True):
            labels = c.labels or {}
            if c.name.startswith(prefix) or labels.get("io.conveyor.app", "").startswith(prefix):
                with contextlib.suppress(docker.errors.NotFound):
                    c.remove(force=True)
    with contextlib.suppress(docker.errors.DockerException):
        for img in client.images.list():
            for tag in img.tags:
                if tag.startswith(prefix):
                    with contextlib.suppress(docker.errors.DockerException):
                        client.images.remove(tag, force=True)


@pytest.fixture(scope="session")
def docker_api() -> Iterator[Any]:
    client = docker_client()
    try:
        yield client
    finally:
        remove_prefixed(client)
        client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_api: Any) -> str:
    """`<PREFIX>-busybox:base`, made once per session (removed with everything prefixed)."""
    repo = f"{PREFIX}-busybox"
    import_busybox(docker_api, repo)
    return f"{repo}:base"
