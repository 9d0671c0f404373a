"""Release images: built (or resolved) once, by `conveyor release create`, recorded with the release.

For a container runtime ([runtime] kind = "docker" or "swarm"), each service with `image` gets
its image with the release:

- with `build = "dir"`: `docker build` of that directory of the release's SNAPSHOT (the tree
  conveyor stores, not the working directory), tagged `<image>:<version>` and labelled with the
  app, service, version and release digest;
- without: the configured reference as it resolves on this Docker host now (no registry is
  reached: the image must be here).

The image id is recorded per service (store/images.py); `conveyor deploy` never builds, and the
runtime starts the recorded id, so what production runs is what staging ran. A failed build
records nothing and leaves no tag behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.config import Config
from conveyor.runtimes.docker_common import label
from conveyor.store.images import ReleaseImage

if TYPE_CHECKING:
    import docker

CONTAINER_RUNTIMES = frozenset({"docker", "swarm"})
# A build step may be silent for long (compiling): the client waits this long for its output.
BUILD_TIMEOUT = 1800


class ImageError(Exception):
    """An image cannot be built or found; the message says which and why."""


def wanted(cfg: Config) -> dict[str, tuple[str, str | None]]:
    """The services whose release needs an image: {service: (image, build dir or None)}."""
    if cfg.runtime.kind not in CONTAINER_RUNTIMES:
        return {}
    return {
        name: (svc.image, svc.build)
        for name, svc in sorted(cfg.services.items())
        if svc.image is not None
    }


def _client() -> docker.DockerClient:
    import docker

    try:
        return docker.from_env(timeout=BUILD_TIMEOUT)
    except docker.errors.DockerException as exc:
        raise ImageError(
            f"cannot reach the Docker engine to build the release's images: {exc}"
        ) from exc


def release_images(
    cfg: Config,
    version: str,
    digest: str,
    tree: Path,
    progress: Callable[[str], None],
) -> list[ReleaseImage]:
    """Build or resolve the images of release `version` (snapshot `tree`, digest `digest`)."""
    services = wanted(cfg)
    if not services:
        return []
    import docker

    api = _client()
    made: list[str] = []  # tags this call created: removed again if a later one fails
    try:
        images = []
        for service, (image, build) in services.items():
            if build is None:
                images.append(_resolve(api, service, image))
            else:
                tag = f"{image}:{version}"
                image_id = _build(
                    api, cfg.app.name, service, tag, version, digest, tree, build, progress
                )
                made.append(tag)
                images.append(ReleaseImage(service, tag, image_id, built=True))
        return images
    except BaseException:
        for tag in made:
            with contextlib.suppress(docker.errors.DockerException):
                api.images.remove(tag)
        raise
    finally:
        api.close()


def _resolve(api: docker.DockerClient, service: str, image: str) -> ReleaseImage:
    import docker

    try:
        found = api.images.get(image)
    except docker.errors.ImageNotFound as exc:
        raise ImageError(
            f"services.{service}.image {image!r} is not on this Docker host: conveyor pulls "
            "from no registry, so `docker pull` or `docker load` it first (or add build)"
        ) from exc
    except docker.errors.DockerException as exc:
        raise ImageError(f"cannot look up image {image!r} of {service}: {exc}") from exc
    return ReleaseImage(service, image, str(found.id), built=False)


def _build(
    api: docker.DockerClient,
    app: str,
    service: str,
    tag: str,
    version: str,
    digest: str,
    tree: Path,
    build: str,
    progress: Callable[[str], None],
) -> str:
    import docker

    context = (tree / build).resolve()
    if not context.is_relative_to(tree.resolve()) or not context.is_dir():
        raise ImageError(f"services.{service}.build {build!r} is not a directory of the release")
    if not (context / "Dockerfile").is_file():
        raise ImageError(
            f"services.{service}.build {build!r}: the release has no {build.rstrip('/')}/Dockerfile"
            " (is it committed?)"
        )
    progress(f"building {tag} for {service} from {build} of release {version}")
    labels = {
        label("app"): app,
        label("service"): service,
        label("version"): version,
        label("release"): digest,
    }
    image_id = None
    try:
        chunks: Any = api.api.build(
            path=str(context), tag=tag, labels=labels, rm=True, forcerm=True, decode=True
        )
        for chunk in chunks:
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise ImageError(f"building {tag} for {service} failed: {str(detail).strip()}")
            for line in str(chunk.get("stream", "")).splitlines():
                if line.strip():
                    progress(line.rstrip())
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = str(aux["ID"])
    except docker.errors.DockerException as exc:
        raise ImageError(f"building {tag} for {service} failed: {exc}") from exc
    if image_id is None:
        try:
            image_id = str(api.images.get(tag).id)
        except docker.errors.DockerException as exc:
            raise ImageError(f"building {tag} for {service} left no image: {exc}") from exc
    progress(f"built {tag}: {image_id}")
    return image_id
