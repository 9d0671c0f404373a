"""Colors as Kubernetes Deployments: `[runtime] kind = "kubernetes"`.

Starting a color applies its Secret (the secret values, read by the pods through secretKeyRef),
its Deployment `<service>-<color>` and its Service of the same name (kube/manifests.py builds
them). The handle names the Deployment and this very start (an annotation with a fresh id), so a
Deployment a later start replaced is never taken for this one.

Health is the Deployment's own: the readiness probe, made from the service's health settings,
runs inside the cluster, and `state` reports its result (RunState.ready) from the Deployment's
status, so the agent never needs to reach a pod. The handle's endpoint is the color Service's
cluster address, for the record and for routers; the engine does not probe it.

Stopping scales the Deployment to zero (the standby window's end) and deletes the color's Secret;
the Deployment stays, empty, for the next start of that color to apply over. A crash is a pod
restart inside the cluster, which the readiness probe sees: `exited` cannot tell it, the engine
polls `state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from conveyor.kube import manifests as m
from conveyor.kube.client import Kube, KubeError
from conveyor.runtimes.base import Endpoint, Handle, RunState, RuntimeStartError, Workload

log = logging.getLogger("conveyor.kubernetes")
STARTED = m.START
POLL = 0.25  # how often a stop looks whether the pods are gone


def spec_of(w: Workload, namespace: str, start: str) -> m.ColorSpec:
    """The workload as a color's objects see it (ManifestError when it cannot be one)."""
    o = w.options
    secrets: Mapping[str, str] = w.secrets
    return m.ColorSpec(
        app=w.app,
        environment=w.environment,
        service=w.service,
        color=w.color,
        version=w.version,
        namespace=namespace,
        image=m.image_for(o, w.version, w.service),
        command=w.command,
        web=w.port is not None,
        container_port=int(o.get("container_port") or m.DEFAULT_CONTAINER_PORT),
        replicas=int(o.get("replicas", 1)),
        resources=dict(o.get("resources") or {}),
        health=m.health_of(o.get("health")),
        stop_timeout=float(o.get("stop_timeout", 10.0)),
        env=m.container_env_of(w.env, os.environ),
        secrets=tuple(sorted(secrets)),
        start=start,
    )


def readiness(dep: Mapping[str, Any]) -> RunState:
    """What a Deployment's status says: alive while it should run pods, ready when they all are."""
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    want = int(spec.get("replicas", 1))
    if want == 0:
        return RunState(False, "scaled to zero", ready=False)
    available = int(status.get("availableReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("observedGeneration") or 0) >= int(
        (dep.get("metadata") or {}).get("generation") or 0
    )
    detail = f"{available}/{want} replicas available"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            detail += f" ({cond.get('message') or 'progress deadline exceeded'})"
    return RunState(True, detail, ready=current and updated >= want and available >= want)


class KubernetesRuntime:
    name = "kubernetes"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})
        self._kubes: dict[tuple[str, str], Kube] = {}

    def _kube(self, namespace: str, context: str | None) -> Kube:
        key = (namespace, context or "")
        kube = self._kubes.get(key)
        if kube is None:
            kube = self._kubes[key] = Kube(namespace, context or None)
        return kube

    def _of(self, h: Handle) -> Kube:
        return self._kube(str(h.ref["namespace"]), str(h.ref.get("context") or "") or None)

    async def start(self, w: Workload) -> Handle:
        settings = {**self.settings, **(w.options.get("runtime") or {})}
        namespace = str(settings.get("namespace") or "default")
        context = settings.get("context")
        kube = self._kube(namespace, context)
        start = uuid.uuid4().hex[:12]
        try:
            spec = spec_of(w, namespace, start)
            name = m.color_name(w.service, w.color)
            await kube.owned("Deployment", name, m.selector(w.app, w.environment, w.service))
            secrets: Mapping[str, str] = w.secrets
            applied: dict[str, Any] = {}
            for obj in m.color_objects(spec, secrets):
                result = await kube.apply(obj)
                if obj["kind"] == "Deployment":
                    applied = result
        except (m.ManifestError, KubeError) as exc:
            raise RuntimeStartError(str(exc)) from None
        ref: dict[str, str | int] = {
            "name": name,
            "app": w.app,
            "environment": w.environment,
            "service": w.service,
            "color": w.color,
            "namespace": namespace,
            "context": context or "",
            "start": start,
            "uid": str((applied.get("metadata") or {}).get("uid") or ""),
        }
        endpoints = (Endpoint(f"{name}.{namespace}.svc", spec.container_port),) if spec.web else ()
        return Handle(self.name, ref, endpoints, time.time())

    async def _ours(self, h: Handle) -> dict[str, Any] | None:
        """The handle's Deployment, if it is still this very start."""
        kube = self._of(h)
        dep = await kube.get("Deployment", str(h.ref["name"]))
        if dep is None:
            return None
        annotations = (dep.get("metadata") or {}).get("annotations") or {}
        return dep if annotations.get(STARTED) == h.ref.get("start") else None

    async def adopt(self, h: Handle) -> Handle | None:
        try:
            dep = await self._ours(h)
        except KubeError:
            return None
        return h if dep is not None and readiness(dep).alive else None

    async def state(self, h: Handle) -> RunState:
        try:
            dep = await self._ours(h)
        except KubeError as exc:
            # The API not answering says nothing about the pods: alive, not known to be ready.
            return RunState(True, str(exc), ready=False)
        if dep is None:
            # ready=False, not None: never an HTTP probe of its cluster address from here.
            return RunState(
                False, "not running (its Deployment is gone or was replaced)", ready=False
            )
        return readiness(dep)

    async def exited(self, h: Handle) -> RunState | None:
        return None

    async def stop(self, h: Handle, grace: float) -> None:
        kube = self._of(h)
        name = str(h.ref["name"])
        try:
            if await self._ours(h) is None:
                return  # another start's Deployment now: not ours to stop
            await kube.merge_patch("Deployment", name, {"spec": {"replicas": 0}})
            await kube.delete("Secret", m.secret_name(str(h.ref["service"]), str(h.ref["color"])))
            labels = self._pod_labels(h)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and await kube.pods(labels):
                await asyncio.sleep(POLL)
            for pod in await kube.pods(labels):
                await kube.delete("Pod", pod["metadata"]["name"], grace=0)
        except KubeError as exc:
            # Nothing the caller could do better: the color is forgotten either way, and the
            # log says what may still run in the cluster.
            log.error("could not stop %s: %s", name, exc)

    def _pod_labels(self, h: Handle) -> dict[str, str]:
        r = h.ref
        return m.selector(str(r["app"]), str(r["environment"]), str(r["service"]), str(r["color"]))

    async def logs(self, h: Handle, follow: bool) -> AsyncIterator[bytes]:
        kube = self._of(h)
        try:
            pods = [p["metadata"]["name"] for p in await kube.pods(self._pod_labels(h))]
        except KubeError as exc:
            yield f"(could not list the pods: {exc})\n".encode()
            return
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def read(pod: str) -> None:
            prefix = f"[{pod}] " if len(pods) > 1 else ""
            try:
                async for line in kube.log(pod, follow):
                    await queue.put((prefix + line).encode())
            except KubeError as exc:
                await queue.put(f"({exc})\n".encode())
            finally:
                await queue.put(None)

        readers = [asyncio.create_task(read(pod)) for pod in pods]
        try:
            left = len(readers)
            while left:
                item = await queue.get()
                if item is None:
                    left -= 1
                else:
                    yield item
        finally:
            for task in readers:
                task.cancel()
            for task in readers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def tail(self, h: Handle, lines: int) -> list[str]:
        return self._of(h).tail(self._pod_labels(h), lines)

    async def close(self) -> None:
        for kube in self._kubes.values():
            await kube.close()
