"""The few Kubernetes API calls conveyor makes, through lightkube, on the manifests' plain dicts.

lightkube is the client: typed models for every built-in kind, generic resources for CRDs such
as HTTPRoute, server-side apply, and an asyncio client (the engine is asyncio; the official
`kubernetes` package is synchronous). Each call is bounded by the client's timeout; every
failure comes out as KubeError naming the object, never as a lightkube or HTTP exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx2
import msgspec
from lightkube import ApiError, AsyncClient, Client, codecs
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ConfigError, LoadResourceError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod, Secret, Service
from lightkube.types import PatchType

FIELD_MANAGER = "conveyor"
TIMEOUT = 10.0

HTTPRoute = create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
KINDS: dict[str, Any] = {
    "Deployment": Deployment,
    "Service": Service,
    "Secret": Secret,
    "Pod": Pod,
    "HTTPRoute": HTTPRoute,
}
# What a failed call raises inside lightkube: the API's answer, the connection, the kubeconfig.
_FAILURES = (
    ApiError,
    httpx2.HTTPError,
    OSError,
    ConfigError,
    LoadResourceError,
    msgspec.ValidationError,  # an answer that is not the object it should be
)


class KubeError(Exception):
    """A Kubernetes API call failed; the message says which call, on which object, and why."""


def load_config(context: str | None) -> Any:
    """The kubeconfig conveyor uses: in-cluster, else $KUBECONFIG, else ~/.kube/config."""
    try:
        config = KubeConfig.from_env()
        single = config.get(context_name=context) if context else config.get()
    except (ConfigError, OSError) as exc:
        raise KubeError(f"no usable kubeconfig: {exc}") from None
    if single is None:
        raise KubeError(f"kubeconfig has no context {context!r}")
    return single


def _why(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"{exc.status.code} {exc.status.reason or ''}: {exc.status.message}".strip()
    return str(exc) or type(exc).__name__


def _absent(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status.code == 404


def _plain(obj: Any) -> dict[str, Any]:
    return dict(obj.to_dict())


class Kube:
    """One namespace of one cluster (a kubeconfig context)."""

    def __init__(self, namespace: str, context: str | None = None, timeout: float = TIMEOUT):
        self.namespace = namespace
        self.context = context
        self.timeout = timeout
        self._client: AsyncClient | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            self._client = AsyncClient(
                config=load_config(self.context),
                namespace=self.namespace,
                field_manager=FIELD_MANAGER,
                timeout=httpx2.Timeout(self.timeout),
            )
        return self._client

    def where(self, kind: str, name: str) -> str:
        return f"{kind} {self.namespace}/{name}"

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as conveyor's field manager, taking over fields others set."""
        what = self.where(obj["kind"], obj["metadata"]["name"])
        try:
            applied = await self.client.apply(codecs.from_dict(dict(obj)), force=True)
        except _FAILURES as exc:
            raise KubeError(f"could not apply {what}: {_why(exc)}") from None
        return _plain(applied)

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            found = await self.client.get(KINDS[kind], name, namespace=self.namespace)
        except _FAILURES as exc:
            if _absent(exc):
                return None
            raise KubeError(f"could not read {self.where(kind, name)}: {_why(exc)}") from None
        return _plain(found)

    async def owned(self, kind: str, name: str, owner: Mapping[str, str]) -> dict[str, Any] | None:
        """The object if it carries the `owner` labels, None if there is none; KubeError if it
        is someone else's (another app or environment in the namespace, or not conveyor's)."""
        found = await self.get(kind, name)
        if found is None:
            return None
        labels = (found.get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in owner.items()):
            raise KubeError(
                f"{self.where(kind, name)} exists and is not conveyor's for "
                f"{', '.join(f'{k}={v}' for k, v in owner.items())} (its labels: {labels}): "
                "use another namespace ([runtime] namespace) or remove it"
            )
        return found

    async def merge_patch(self, kind: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        try:
            patched = await self.client.patch(
                KINDS[kind], name, dict(patch), namespace=self.namespace, patch_type=PatchType.MERGE
            )
        except _FAILURES as exc:
            raise KubeError(f"could not patch {self.where(kind, name)}: {_why(exc)}") from None
        return _plain(patched)

    async def delete(self, kind: str, name: str, grace: int | None = None) -> bool:
        """Delete it; False if it was not there."""
        try:
            await self.client.delete(
                KINDS[kind], name, namespace=self.namespace, grace_period=grace
            )
        except _FAILURES as exc:
            if _absent(exc):
                return False
            raise KubeError(f"could not delete {self.where(kind, name)}: {_why(exc)}") from None
        return True

    async def pods(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        try:
            return [
                _plain(pod)
                async for pod in self.client.list(
                    Pod, namespace=self.namespace, labels=dict(labels)
                )
            ]
        except _FAILURES as exc:
            raise KubeError(f"could not list the pods in {self.namespace}: {_why(exc)}") from None

    async def log(self, pod: str, follow: bool) -> AsyncIterator[str]:
        try:
            async for line in self.client.log(pod, namespace=self.namespace, follow=follow):
                yield line
        except _FAILURES as exc:
            raise KubeError(f"could not read the log of pod {pod}: {_why(exc)}") from None

    def tail(self, labels: Mapping[str, str], lines: int) -> list[str]:
        """The last lines of each pod's log (synchronous, for error messages; bounded by the
        client's timeout)."""
        out: list[str] = []
        try:
            with Client(
                config=load_config(self.context),
                namespace=self.namespace,
                timeout=httpx2.Timeout(self.timeout),
            ) as client:
                pods = list(client.list(Pod, namespace=self.namespace, labels=dict(labels)))
                for pod in pods:
                    name = pod.metadata.name if pod.metadata is not None else None
                    if name is None:
                        continue
                    said = client.log(name, namespace=self.namespace, tail_lines=lines)
                    prefix = f"[{name}] " if len(pods) > 1 else ""
                    out.extend(prefix + line.rstrip("\n") for line in said)
        except (*_FAILURES, KubeError) as exc:
            out.append(f"(could not read the pod logs: {_why(exc)})")
        return out[-lines:] if lines else []

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
