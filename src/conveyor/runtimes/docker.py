"""DockerRuntime: each color of a service is one container on the local Docker engine.

Started from the image recorded with the release (`conveyor release create` built or resolved
it), never from a tag that may have moved since. With `network = "host"` the app listens on the
port conveyor gives it (PORT, {port}), as a local process does; with bridge networking its
`container_port` is published on a loopback port the runtime picks, and the handle's endpoint
is that port on 127.0.0.1. The environment goes through the API, never on a command line.

Containers carry labels (runtimes/docker_common.py): a restarted agent adopts a container by its
id only when its labels name the same project, color and start. No restart policy: a crash is
the engine's to see and handle, as for processes. A stopped color's container is removed, and
the images conveyor built for that service are pruned down to the newest `keep_images`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.runtimes import docker_common as dc
from conveyor.runtimes import docker_logs
from conveyor.runtimes.base import Endpoint, Handle, RunState, RuntimeStartError, Workload
from conveyor.secrets.redact import Redactor

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

log = logging.getLogger(__name__)

# How often exited() looks at a container's state (a blocking wait would hold a thread).
EXIT_POLL = 0.25
LOOPBACK = dc.LOOPBACK


async def pumped(stream: Any) -> AsyncIterator[bytes]:
    """A blocking stream of log chunks (the SDK's) read in a thread, closed when we stop."""
    import docker

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for chunk in stream:
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
        except (docker.errors.DockerException, OSError, ValueError):
            pass  # closed by the reader, or the engine went away
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed first
                loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="docker-logs", daemon=True).start()
    try:
        while (chunk := await queue.get()) is not None:
            yield chunk
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


class DockerRuntime:
    """`Runtime` for containers on the Docker engine DOCKER_HOST names (the local one)."""

    name = "docker"

    def __init__(self, log_dir: Path, settings: Mapping[str, Any] | None = None) -> None:
        self.log_dir = log_dir
        self.keep_images = int((settings or {}).get("keep_images", 3))
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        # Workloads whose output is being copied into their log file (docker_logs).
        self._copying: set[str] = set()

    @property
    def api(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = dc.client()
            return self._client

    # --- start ------------------------------------------------------------------------------

    async def start(self, w: Workload) -> Handle:
        return await asyncio.to_thread(self.start_sync, w)

    def start_sync(self, w: Workload) -> Handle:
        import docker

        opts = w.options
        choice = dc.image_of(w)
        image_id = dc.check_image(self.api, w, choice)
        host = opts.get("network") == "host"
        # port: where the app listens (inside the container); published: where conveyor reaches it
        port, published = dc.ports_of(w, host)
        ports: dict[str, tuple[str, int]] = {}
        if published is not None and not host:
            ports = {f"{port}/tcp": (LOOPBACK, published)}
        labels = {**dc.workload_labels(w), **dc.secret_labels(w), **dc.deployment_labels(w)}
        kwargs: dict[str, Any] = {
            "name": dc.object_name(w),
            "command": dc.command_of(w, port),
            "environment": dc.container_env(w, port),
            "labels": labels,
            "detach": True,
            "network_mode": "host" if host else "bridge",
            **dc.limits(opts.get("resources") or {}),
        }
        if ports:
            kwargs["ports"] = ports
        sig = dc.stop_signal(w)
        if sig:
            kwargs["stop_signal"] = sig
        if opts.get("workdir") not in (None, "", "."):
            kwargs["working_dir"] = str(opts["workdir"])
        try:
            container = self.api.containers.create(image_id, **kwargs)
        except docker.errors.DockerException as exc:
            raise RuntimeStartError(f"cannot create the container of {w.service}: {exc}") from exc
        try:
            container.start()
        except docker.errors.DockerException as exc:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
            raise RuntimeStartError(f"cannot start the container of {w.service}: {exc}") from exc
        self._log_start(w, published, f"container {str(container.id)[:12]}", str(container.id))
        return Handle(
            runtime=self.name,
            ref={
                "container": str(container.id)[:12],
                "id": str(container.id),
                "image": image_id,
                **dc.ref_of(w),
            },
            endpoints=(Endpoint(LOOPBACK, published),) if published is not None else (),
            started_at=time.time(),
        )

    def log_path(self, w: Workload | Handle) -> Path:
        """Where `conveyor logs` reads the color's output (as for local processes)."""
        if isinstance(w, Workload):
            env, service, color = w.environment, w.service, w.color
        else:
            env, service, color = (
                str(w.ref.get(k, "")) for k in ("environment", "service", "color")
            )
        return self.log_dir / env / service / f"{color}.log"

    def _log_start(self, w: Workload, port: int | None, what: str, ident: str) -> None:
        """The start line in the color's log (as for processes), then its output after it."""
        shown = "-" if port is None else str(port)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path = self.log_path(w)
        docker_logs.header(
            path, f"--- {at} start {w.service} {w.color} {w.version} port={shown} {what} ---"
        )
        self._copy_logs(path, ident, w.secrets, new=True)

    def _copy_logs(
        self, path: Path, ident: str, secrets: Mapping[str, str], new: bool = False
    ) -> None:
        if ident in self._copying:
            return
        self._copying.add(ident)
        since = None if new else docker_logs.last_time(path)
        redactor = Redactor(secrets) if secrets else None
        docker_logs.follow(path, self._log_source(ident), ident[:12], since, redactor)

    def _log_source(self, ident: str) -> docker_logs.Source:
        def source(stream: str, since: float | None) -> Any:
            import docker

            # A client of its own: a followed stream holds its connection for as long as it runs.
            api = docker.from_env(timeout=None).api
            try:
                yield from self._log_stream(api, ident, stream, since)
            finally:
                api.close()
                self._copying.discard(ident)

        return source

    def _log_stream(self, api: Any, ident: str, stream: str, since: float | None) -> Any:
        return api.logs(
            ident,
            stdout=stream == "stdout",
            stderr=stream == "stderr",
            stream=True,
            follow=True,
            timestamps=True,
            since=since,
        )

    # --- finding and checking ---------------------------------------------------------------

    def _container(self, h: Handle) -> Container | None:
        """Our container of this handle (id and labels agree), or None if it is gone."""
        import docker

        cid = str(h.ref.get("id", ""))
        if h.runtime != self.name or not cid:
            return None
        try:
            container = self.api.containers.get(cid)
        except docker.errors.NotFound:
            return None
        if container.id != cid or not dc.labels_match(h, container.labels):
            return None
        return container

    async def adopt(self, h: Handle) -> Handle | None:
        def find() -> Handle | None:
            c = self._container(h)
            if c is None or not c.attrs["State"].get("Running"):
                return None
            secrets = dc.secrets_of(c.labels, c.attrs.get("Config", {}).get("Env"))
            self._copy_logs(self.log_path(h), str(c.id), secrets)
            return h

        try:
            return await asyncio.to_thread(find)
        except dc.unreachable() as exc:
            log.warning("cannot adopt %s: %s", h.summary, exc)
            return None

    def state_sync(self, h: Handle) -> RunState:
        c = self._container(h)
        if c is None:
            return RunState(False, "not running (its container is gone)")
        st = c.attrs["State"]
        if st.get("Running"):
            return RunState(True, "running")
        code = int(st.get("ExitCode") or 0)
        ended = dc.parse_time(st.get("FinishedAt"))
        return RunState(False, dc.exit_detail(code, bool(st.get("OOMKilled"))), ended)

    async def state(self, h: Handle) -> RunState:
        try:
            return await asyncio.to_thread(self.state_sync, h)
        except dc.unreachable() as exc:
            # Not known. Taken for alive: a Docker engine restart is no crash of the app (its
            # containers may run on), and the health checks still see one that does not answer.
            return RunState(True, f"unknown (the Docker engine does not answer: {exc})")

    async def exited(self, h: Handle) -> RunState | None:
        # Polled: the API's wait endpoint would hold a thread per color until it ends.
        while True:
            st = await self.state(h)
            if not st.alive:
                return st
            await asyncio.sleep(EXIT_POLL)

    # --- stop -------------------------------------------------------------------------------

    async def stop(self, h: Handle, grace: float) -> None:
        try:
            await asyncio.to_thread(self.stop_sync, h, grace)
        except dc.unreachable() as exc:
            log.warning("cannot stop %s: %s", h.summary, exc)

    def stop_sync(self, h: Handle, grace: float) -> None:
        import docker

        c = self._container(h)
        if c is None:
            return  # gone, or not ours: never touched
        try:
            # The container's stop signal (stop_signal, else the image's STOPSIGNAL), then
            # SIGKILL after the grace period; the request's timeout grows by the grace.
            c.stop(timeout=max(0, round(grace)))
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            log.warning("cannot stop container %s: %s", h.ref.get("container"), exc)
            return
        self.prune_images(str(h.ref.get("app", "")), str(h.ref.get("service", "")))

    def prune_images(self, app: str, service: str) -> list[str]:
        """Remove the images conveyor built for this service but the newest `keep_images` and
        any that a container still uses; the ids removed."""
        import docker

        if not app or not service:
            return []
        filters = {"label": [f"{dc.label('app')}={app}", f"{dc.label('service')}={service}"]}
        try:
            images = self.api.images.list(filters=filters)
            used = {
                c.attrs.get("Image")
                for c in self.api.containers.list(
                    all=True, filters={"label": f"{dc.label('app')}={app}"}
                )
            }
        except docker.errors.DockerException as exc:
            log.warning("cannot list the images of %s/%s: %s", app, service, exc)
            return []
        images.sort(key=lambda img: str(img.attrs.get("Created", "")), reverse=True)
        removed = []
        for img in images[self.keep_images :]:
            if img.id in used:
                continue
            try:
                for tag in img.tags:
                    self.api.images.remove(tag, noprune=False)
            except docker.errors.DockerException as exc:
                log.warning("cannot remove image %s: %s", img.id, exc)
                continue
            removed.append(str(img.id))
        return removed

    # --- output -----------------------------------------------------------------------------

    async def logs(self, h: Handle, follow: bool) -> AsyncIterator[bytes]:

        c = await asyncio.to_thread(self._container, h)
        if c is None:
            return
        if not follow:
            yield await asyncio.to_thread(c.logs, stdout=True, stderr=True)
            return
        async for chunk in pumped(c.logs(stdout=True, stderr=True, stream=True, follow=True)):
            yield chunk

    def tail(self, h: Handle, lines: int) -> list[str]:
        import docker

        c = self._container(h)
        if c is None:
            return []
        try:
            out: bytes = c.logs(stdout=True, stderr=True, tail=lines)
        except docker.errors.DockerException:
            return []
        return out.decode(errors="replace").splitlines()[-lines:]
