"""SwarmRuntime: each color of a service is one Docker Swarm service, with `replicas` tasks.

Blue/green and canary stay at conveyor's router: a new color is a new Swarm service next to the
old one (never Swarm's rolling update of a service), so a rollback is a switch back, at once.
Swarm restarts a crashed task (restart policy on-failure, a few attempts), checks it with a
health check built from the service's health settings, and spreads the tasks over the nodes.

The router learns where the tasks run from the Swarm API: start() waits until every task has a
node, and the endpoints are those nodes' addresses with the service's port (host networking:
the port conveyor gave; bridge: the port published on each node in host mode). Labels are the
Docker runtime's (runtimes/docker_common.py), on the service and on its containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.runtimes import docker_common as dc
from conveyor.runtimes.base import Endpoint, Handle, RunState, RuntimeStartError, Workload
from conveyor.runtimes.docker import LOOPBACK, DockerRuntime, pumped

if TYPE_CHECKING:
    from docker.models.services import Service

log = logging.getLogger(__name__)

# How long start() waits for the tasks to be placed on nodes (their addresses are the endpoints).
PLACE_TIMEOUT = 60.0
POLL = 0.2
# Tasks on their way up (or running): the color is alive while one of them is.
UP = frozenset(
    {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
)
# Swarm restarts a failed task this often before it gives up (then the engine sees the exit).
RESTARTS = 3
NANOS = 10**9


def health_check(w: Workload, port: int | None) -> dict[str, Any] | None:
    """A container health check from the service's health settings: an HTTP GET of the path
    with the image's wget or curl; an image with neither passes it (conveyor's own probe
    still decides when the color gets traffic)."""
    health = w.options.get("health") or {}
    if port is None or not health.get("path"):
        return None
    url = f"http://127.0.0.1:{port}{health['path']}"
    script = (
        f"if command -v wget >/dev/null; then exec wget -q -O /dev/null {url}; fi; "
        f"if command -v curl >/dev/null; then exec curl -fsS -o /dev/null {url}; fi; exit 0"
    )
    return {
        "test": ["CMD-SHELL", script],
        "interval": int(float(health.get("interval", 1.0)) * NANOS),
        "timeout": int(float(health.get("timeout", 2.0)) * NANOS),
        "retries": int(health.get("unhealthy_threshold", 3)),
        "start_period": int(float(health.get("start_timeout", 60.0)) * NANOS),
    }


class SwarmRuntime(DockerRuntime):
    """`Runtime` for Swarm services, through the manager DOCKER_HOST names (the local one)."""

    name = "swarm"

    def __init__(self, log_dir: Path, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(log_dir, settings)

    def start_sync(self, w: Workload) -> Handle:
        import docker
        from docker.types import EndpointSpec, Healthcheck, Resources, RestartPolicy, UpdateConfig

        opts = w.options
        image_id = dc.check_image(self.api, w, dc.image_of(w))
        host = opts.get("network") == "host"
        port, published = dc.ports_of(w, host)
        kwargs: dict[str, Any] = {}
        if published is not None and not host:
            # Host mode: each node publishes its own task's port (no routing mesh, whose
            # virtual IP would hide which color answers).
            kwargs["endpoint_spec"] = EndpointSpec(ports={published: (port, "tcp", "host")})
        if host:
            kwargs["networks"] = ["host"]
        labels = {**dc.workload_labels(w), **dc.secret_labels(w), **dc.deployment_labels(w)}
        env = dc.container_env(w, port)
        limits = dc.limits(opts.get("resources") or {})
        if limits:
            kwargs["resources"] = Resources(
                cpu_limit=limits.get("nano_cpus"), mem_limit=limits.get("mem_limit")
            )
        check = health_check(w, port)
        if check is not None:
            kwargs["healthcheck"] = Healthcheck(**check)
        sig = dc.stop_signal(w)
        if sig:
            kwargs["stop_signal"] = sig
        if opts.get("workdir") not in (None, "", "."):
            kwargs["workdir"] = str(opts["workdir"])
        replicas = int(opts.get("replicas") or 1)
        try:
            service = self.api.services.create(
                image_id,
                args=dc.command_of(w, port),
                name=dc.object_name(w),
                env=[f"{k}={v}" for k, v in env.items()],
                labels=labels,
                container_labels=labels,
                mode=docker.types.ServiceMode("replicated", replicas=replicas),
                restart_policy=RestartPolicy(
                    condition="on-failure", delay=NANOS, max_attempts=RESTARTS
                ),
                update_config=UpdateConfig(
                    parallelism=1, order="start-first", failure_action="pause"
                ),
                stop_grace_period=int(float(opts.get("stop_timeout", 10.0)) * NANOS),
                **kwargs,
            )
        except docker.errors.DockerException as exc:
            raise RuntimeStartError(
                f"cannot create the Swarm service of {w.service}: {exc}"
            ) from exc
        handle = Handle(
            runtime=self.name,
            ref={
                "name": str(service.name),
                "id": str(service.id),
                "image": image_id,
                **dc.ref_of(w),
            },
            endpoints=(),
            started_at=time.time(),
        )
        try:
            addresses = self._placed(service, replicas)
        except BaseException:
            with contextlib.suppress(docker.errors.DockerException):
                service.remove()
            raise
        self._log_start(w, published, f"service {service.name}", str(service.id))
        if published is None:
            return handle
        endpoints = tuple(Endpoint(addr, published) for addr in addresses)
        return Handle(handle.runtime, handle.ref, endpoints, handle.started_at)

    def _placed(self, service: Service, replicas: int) -> list[str]:
        """The addresses of the nodes the service's tasks run on, once each task has one."""
        deadline = time.monotonic() + PLACE_TIMEOUT
        while True:
            tasks = [t for t in service.tasks() if t.get("DesiredState") in ("running", "ready")]
            nodes = {t["NodeID"] for t in tasks if t.get("NodeID")}
            if len(tasks) >= replicas and all(t.get("NodeID") for t in tasks):
                return sorted({self._node_address(n) for n in nodes})
            failed = [t for t in service.tasks() if t["Status"].get("State") in ("rejected",)]
            if failed:
                raise RuntimeStartError(
                    f"Swarm cannot place {service.name}: {failed[0]['Status'].get('Err', '')}"
                )
            if time.monotonic() > deadline:
                raise RuntimeStartError(
                    f"Swarm placed no task of {service.name} within {PLACE_TIMEOUT:.0f}s"
                )
            time.sleep(POLL)

    def _node_address(self, node_id: str) -> str:
        node = self.api.nodes.get(node_id)
        addr = str(node.attrs.get("Status", {}).get("Addr") or "")
        # A node that advertises no usable address is this one (a single-node swarm).
        return addr if addr and addr != "0.0.0.0" else LOOPBACK

    def _log_stream(self, api: Any, ident: str, stream: str, since: float | None) -> Any:
        return api.service_logs(
            ident,
            stdout=stream == "stdout",
            stderr=stream == "stderr",
            follow=True,
            timestamps=True,
            since=int(since or 0),
        )

    # --- finding and checking ---------------------------------------------------------------

    def _service(self, h: Handle) -> Service | None:
        import docker

        sid = str(h.ref.get("id", ""))
        if h.runtime != self.name or not sid:
            return None
        try:
            service = self.api.services.get(sid)
        except docker.errors.NotFound:
            return None
        if service.id != sid or not dc.labels_match(h, service.attrs["Spec"].get("Labels")):
            return None
        return service

    async def adopt(self, h: Handle) -> Handle | None:
        def find() -> Handle | None:
            if not self.state_sync(h).alive:
                return None
            service = self._service(h)
            spec = service.attrs["Spec"] if service is not None else {}
            env = spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Env")
            secrets = dc.secrets_of(spec.get("Labels"), env)
            self._copy_logs(self.log_path(h), str(h.ref["id"]), secrets)
            return h

        try:
            return await asyncio.to_thread(find)
        except dc.unreachable() as exc:
            log.warning("cannot adopt %s: %s", h.summary, exc)
            return None

    def state_sync(self, h: Handle) -> RunState:
        import docker

        service = self._service(h)
        if service is None:
            return RunState(False, "not running (its Swarm service is gone)")
        try:
            tasks = service.tasks()
        except docker.errors.NotFound:
            return RunState(False, "not running (its Swarm service is gone)")
        if not tasks:
            return RunState(True, "starting (no task yet)")
        # A task Swarm restarts after a failure waits (desired state "ready") for its delay.
        wanted = [t for t in tasks if t.get("DesiredState") in ("running", "ready")]
        states = [t["Status"].get("State") for t in wanted]
        if "running" in states:
            return RunState(True, "running")
        if any(s in UP for s in states):
            return RunState(True, "starting")
        last = max(tasks, key=lambda t: str(t["Status"].get("Timestamp", "")))
        status = last["Status"]
        code = status.get("ContainerStatus", {}).get("ExitCode")
        detail = dc.exit_detail(int(code)) if code is not None else str(status.get("State"))
        if status.get("Err"):
            detail += f" ({status['Err']})"
        return RunState(False, detail, dc.parse_time(status.get("Timestamp")))

    # --- stop -------------------------------------------------------------------------------

    def stop_sync(self, h: Handle, grace: float) -> None:
        import docker

        service = self._service(h)
        if service is None:
            return
        try:
            # Scaled to 0 first: each task gets its stop signal and the grace period (the
            # service's stop_grace_period), then the service goes.
            service.scale(0)
            deadline = time.monotonic() + grace + 10.0
            while time.monotonic() < deadline:
                if not any(t["Status"].get("State") in UP | {"running"} for t in service.tasks()):
                    break
                time.sleep(POLL)
            service.remove()
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            log.warning("cannot stop Swarm service %s: %s", h.ref.get("name"), exc)
            return
        self.prune_images(str(h.ref.get("app", "")), str(h.ref.get("service", "")))

    # --- output -----------------------------------------------------------------------------

    async def logs(self, h: Handle, follow: bool) -> AsyncIterator[bytes]:
        service = await asyncio.to_thread(self._service, h)
        if service is None:
            return
        async for chunk in pumped(service.logs(stdout=True, stderr=True, follow=follow)):
            yield chunk

    def tail(self, h: Handle, lines: int) -> list[str]:
        import docker

        service = self._service(h)
        if service is None:
            return []
        try:
            out = b"".join(service.logs(stdout=True, stderr=True, tail=lines))
        except docker.errors.DockerException:
            return []
        return out.decode(errors="replace").splitlines()[-lines:]
