"""What the Docker and Swarm runtimes share: the client, labels, names, images, resource limits.

Everything conveyor creates on a Docker engine carries labels saying whose it is (LABELS): the
project (its home, hashed, as in conveyor.markers), the app, environment, service, color, version
and one id per start. Adoption and stopping compare them with the handle, so a container or
service that someone else made, or that took a removed one's name, is never taken for ours.

The SDK is blocking: the runtimes call it in threads (asyncio.to_thread), and every request is
bounded by the client's timeout.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.markers import INSTANCE_ID, PROJECT_ID
from conveyor.ports import _bindable, free_port
from conveyor.runtimes.base import Handle, RuntimeStartError, Workload

if TYPE_CHECKING:
    import docker

# Every Docker API request gives up after this long (stop adds its grace period on top).
API_TIMEOUT = 30.0
PREFIX = "io.conveyor."
# Where conveyor reaches a container's app: loopback only.
LOOPBACK = "127.0.0.1"
LABELS = ("project", "app", "environment", "service", "color", "version", "instance")
# Stamped on the images `conveyor release create` builds: which app, service and release.
IMAGE_LABELS = ("app", "service", "version", "release")


def label(name: str) -> str:
    return PREFIX + name


def client() -> docker.DockerClient:
    """A client for the engine DOCKER_HOST names (the local socket by default)."""
    import docker

    try:
        return docker.from_env(timeout=int(API_TIMEOUT))
    except docker.errors.DockerException as exc:
        raise RuntimeStartError(f"cannot reach the Docker engine: {exc}") from exc


def unreachable() -> tuple[type[Exception], ...]:
    """What the SDK raises when the engine does not answer (or answers with an error)."""
    import docker
    import requests

    return (docker.errors.DockerException, requests.RequestException, RuntimeStartError)


def workload_labels(w: Workload) -> dict[str, str]:
    """The labels of one start of a workload (project and instance come from its markers)."""
    return {
        label("project"): w.env.get(PROJECT_ID, ""),
        label("app"): w.app,
        label("environment"): w.environment,
        label("service"): w.service,
        label("color"): w.color,
        label("version"): w.version,
        label("instance"): w.env.get(INSTANCE_ID, ""),
    }


def container_env(w: Workload, port: int | None) -> dict[str, str]:
    """The app's environment. The project and instance markers travel as labels instead: a
    container's processes are visible in /proc, and the marker scan (conveyor.markers) would
    take them for orphaned local processes."""
    env = {k: v for k, v in w.env.items() if k not in (PROJECT_ID, INSTANCE_ID)}
    if port is not None:
        env["PORT"] = str(port)
    return env


def handle_labels(h: Handle) -> dict[str, str]:
    """The labels a handle's workload must carry to be ours."""
    return {label(k): str(h.ref[k]) for k in LABELS if k in h.ref}


def labels_match(h: Handle, labels: Mapping[str, str] | None) -> bool:
    wanted = handle_labels(h)
    have = labels or {}
    # A handle without the project and instance labels names nothing we could verify.
    if label("project") not in wanted or label("instance") not in wanted:
        return False
    return all(have.get(k) == v for k, v in wanted.items())


def ref_of(w: Workload) -> dict[str, str]:
    """The label values a handle keeps (adoption compares them)."""
    return {k: v for k, v in zip(LABELS, workload_labels(w).values(), strict=True)}


_NAME_BAD = re.compile(r"[^a-z0-9-]+")
# Swarm service names are DNS labels: 63 characters at most.
NAME_MAX = 63


def object_name(w: Workload) -> str:
    """A readable, unique name for a container or service: conveyor-<app>-<env>-<service>-
    <color>, shortened to fit, then the start's instance id (what makes it unique)."""
    instance = _NAME_BAD.sub("-", (w.env.get(INSTANCE_ID, "") or "x").lower())[:12]
    parts = ["conveyor", w.app, w.environment, w.service, w.color]
    head = "-".join(_NAME_BAD.sub("-", p.lower()).strip("-") for p in parts)
    return f"{head[: NAME_MAX - len(instance) - 1].rstrip('-')}-{instance}"


@dataclass(frozen=True)
class ImageChoice:
    """The image a workload runs: the id recorded with its release, or a reference."""

    ref: str
    # What to say when it is missing.
    what: str


def image_of(w: Workload) -> ImageChoice:
    """The image of the workload's release, as recorded by `conveyor release create`."""
    opts = w.options
    recorded = opts.get("image_id")
    image = opts.get("image")
    if recorded:
        return ImageChoice(str(recorded), f"image {recorded} of release {w.version} ({image})")
    if image and opts.get("build"):
        # Not recorded (the engine did not pass it): the tag the release build made.
        return ImageChoice(f"{image}:{w.version}", f"image {image}:{w.version}")
    if image:
        raise RuntimeStartError(
            f"release {w.version} has no image recorded for {w.service}: it was created before "
            f"{w.service} had an image; create a new release"
        )
    raise RuntimeStartError(f"{w.service} has no image: set services.{w.service}.image")


def check_image(api: docker.DockerClient, w: Workload, choice: ImageChoice) -> str:
    """The id of the workload's image; RuntimeStartError (before anything stops) if missing."""
    import docker

    try:
        img = api.images.get(choice.ref)
    except docker.errors.ImageNotFound as exc:
        raise RuntimeStartError(
            f"{choice.what} is not on this Docker host (no registry is used: build it with "
            "`conveyor release create` or load it here)"
        ) from exc
    except docker.errors.DockerException as exc:
        raise RuntimeStartError(f"cannot look up {choice.what}: {exc}") from exc
    if not w.options.get("image_id") and w.options.get("build"):
        # Found by tag only: it must be the image built from this very release.
        labels = img.labels or {}
        release = Path(w.artifact).name
        if labels.get(label("release")) != release or labels.get(label("app")) != w.app:
            raise RuntimeStartError(
                f"{choice.what} was not built by conveyor from release {w.version} "
                f"(label {label('release')} is {labels.get(label('release'))!r}, not {release!r})"
            )
    return str(img.id)


def stop_signal(w: Workload) -> str | None:
    """The signal the workload's stop sends (None: the image's STOPSIGNAL, else SIGTERM)."""
    sig = w.options.get("stop_signal")
    if not sig:
        return None
    name = str(sig).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in signal.Signals.__members__:
        raise RuntimeStartError(f"{w.service}: unknown stop_signal {sig!r}")
    return name


# --- resources (Kubernetes quantities, as in the configuration) ---------------------------------

_SUFFIX = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def cpu_nanos(value: str) -> int:
    """ "250m" / "0.5" / "2" CPUs as billionths of a CPU (Docker's NanoCpus)."""
    try:
        cpus = Decimal(value[:-1]) / 1000 if value.endswith("m") else Decimal(value)
    except InvalidOperation as exc:
        raise RuntimeStartError(f"resources.cpu {value!r} is not a CPU quantity") from exc
    if cpus <= 0:
        raise RuntimeStartError(f"resources.cpu {value!r} must be more than 0")
    return int(cpus * 10**9)


def memory_bytes(value: str) -> int:
    """ "256Mi" / "1G" / "1048576" as bytes."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(|k|M|G|T|Ki|Mi|Gi|Ti)", value)
    if match is None:
        raise RuntimeStartError(f"resources.memory {value!r} is not a memory quantity (256Mi)")
    return int(Decimal(match[1]) * _SUFFIX[match[2]])


def limits(resources: Mapping[str, Any]) -> dict[str, int]:
    """cpu and memory limits: {"nano_cpus": ..., "mem_limit": ...} (absent when unset)."""
    out: dict[str, int] = {}
    if resources.get("cpu"):
        out["nano_cpus"] = cpu_nanos(str(resources["cpu"]))
    if resources.get("memory"):
        out["mem_limit"] = memory_bytes(str(resources["memory"]))
    return out


def exit_detail(code: int, oom: bool = False) -> str:
    """How a container ended, in the words the local runtime uses."""
    if oom:
        return f"killed for using too much memory (exit code {code})"
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exited with code {code}"


def command_of(w: Workload, port: int | None) -> list[str] | None:
    """The command as argv (None: the image's CMD), {port} substituted, split into words as a
    shell would. No shell runs it (an image may have none): write `sh -c '...'` for $VARS."""
    import shlex

    if w.command is None:
        return None
    command = w.command if port is None else w.command.replace("{port}", str(port))
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise RuntimeStartError(f"{w.service}: cannot split command {command!r}: {exc}") from exc


def parse_time(value: str | None) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, Z) as seconds since the epoch; None if unset."""
    if not value or value.startswith("0001-"):
        return None
    match = re.fullmatch(r"(.{19})(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", value)
    if match is None:
        return None
    zone = "+00:00" if match[3] == "Z" else match[3]
    fraction = f".{(match[2] or '0')[:6]}"
    return datetime.fromisoformat(match[1] + fraction + zone).timestamp()


# The names (never the values) of the secrets among a workload's environment: a restarted agent
# reads them back with the environment, so that it goes on redacting the workload's logs.
SECRETS_LABEL = label("secrets")


def secret_labels(w: Workload) -> dict[str, str]:
    return {SECRETS_LABEL: ",".join(sorted(w.secrets))} if w.secrets else {}


def deployment_labels(w: Workload) -> dict[str, str]:
    """The deployment that started it (none for a start outside one), for `docker ps --filter`."""
    found = w.options.get("deployment_id")
    return {label("deployment"): str(found)} if found is not None else {}


def secrets_of(labels: Mapping[str, str] | None, env: Iterable[str] | None) -> dict[str, str]:
    """The secret values of an adopted workload: the labelled names, read from its env."""
    names = set(filter(None, (labels or {}).get(SECRETS_LABEL, "").split(",")))
    found: dict[str, str] = {}
    for item in env or ():
        key, sep, value = item.partition("=")
        if sep and key in names:
            found[key] = value
    return found


def ports_of(w: Workload, host: bool) -> tuple[int | None, int | None]:
    """(where the app listens, where conveyor reaches it) for a workload; (None, None) for a
    worker. Host networking: the port asked for when free on loopback, else a free one. Bridge:
    the container_port inside, published on a free loopback port."""
    if w.port is None:
        return None, None
    if host:
        port = w.port
        if port == 0 or not _bindable(LOOPBACK, port):
            port = free_port(LOOPBACK)
        return port, port
    inner = w.options.get("container_port")
    if not inner:
        raise RuntimeStartError(
            f"{w.service}: bridge networking needs container_port (where the app "
            'listens inside the container), or set network = "host"'
        )
    return int(inner), free_port(LOOPBACK)
