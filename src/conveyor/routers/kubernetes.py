"""Traffic on a Kubernetes cluster: `[router] kind = "kubernetes"` or `"gateway-api"`.

"kubernetes": the Service named after the service selects one color; a switch (and a switch
back) is a merge patch of its selector's color label, which kube-proxy applies on every node
within a second or so, without dropping established connections. The route's preview is the
`<service>-preview` Service, selecting the new color. No weights: a Service sends to whatever
pods it selects, so a split would follow replica counts (as Argo Rollouts does without a mesh),
which conveyor does not do: a canary needs "gateway-api".

"gateway-api": the same Services, plus an HTTPRoute `<service>` whose backendRefs weigh the
color Services (`<service>-<color>`) as the split says: canary steps. The Gateway is
`[runtime] gateway`.

Neither counts requests or in-flight requests: analysis reads Prometheus (docs/kubernetes.md),
and a drain waits the whole drain_timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from conveyor.kube import manifests as m
from conveyor.kube.client import Kube, KubeError
from conveyor.routers.base import ColorCounters, RouterError, Split
from conveyor.routers.kinds import ROUTER_FEATURES

if TYPE_CHECKING:
    from conveyor.config import ResolvedEnvironment

log = logging.getLogger("conveyor.kubernetes")
PREVIEW_SUFFIX = ":preview"


class KubernetesRouter:
    def __init__(self, gateway: bool = False) -> None:
        self.name = "gateway-api" if gateway else "kubernetes"
        self.features = ROUTER_FEATURES[self.name]
        self.gateway = gateway
        self._kubes: dict[tuple[str, str], Kube] = {}
        # The options each route was last applied with: `remove` gets only the route's name.
        self._applied: dict[str, Mapping[str, Any]] = {}

    def options(self, env: ResolvedEnvironment) -> Mapping[str, Any]:
        services = {name: m.route_of(env, name).__dict__ for name in env.web_services()}
        return {"context": env.runtime.context or "", "services": services}

    def _kube(self, namespace: str, context: str) -> Kube:
        key = (namespace, context)
        kube = self._kubes.get(key)
        if kube is None:
            kube = self._kubes[key] = Kube(namespace, context or None)
        return kube

    def _route(self, route: str, options: Mapping[str, Any]) -> tuple[m.Route, bool, Kube]:
        """The service's Route, whether `route` is its preview, and the cluster to talk to."""
        preview = route.endswith(PREVIEW_SUFFIX)
        service = route.removesuffix(PREVIEW_SUFFIX).partition("/")[2]
        raw = (options.get("services") or {}).get(service)
        if raw is None:
            raise RouterError(f"route {route}: no Kubernetes settings for service {service!r}")
        r = m.Route(**raw)
        return r, preview, self._kube(r.namespace, str(options.get("context") or ""))

    async def ensure(self) -> bool:
        # Nothing to start: the cluster keeps the Services and routes when the agent is gone.
        return False

    async def apply(self, split: Split) -> None:
        if not split.backends:
            raise RouterError(f"route {split.route}: no color to send traffic to")
        route, preview, kube = self._route(split.route, split.options)
        # All traffic of a plain Service to one color: the split's heaviest (the old color while
        # a gateway canary is under half).
        top = max(split.backends, key=lambda b: b.weight).color
        try:
            name = (
                m.preview_name(route.service) if preview else m.check_name(route.service, "service")
            )
            current = await self._owned(kube, "Service", name, route)
            if current is None:
                await kube.apply(m.service(route, top, preview=preview))
            else:
                # The switch: one field of one object, applied by the API server atomically.
                await kube.merge_patch("Service", name, {"spec": {"selector": {m.COLOR: top}}})
            if self.gateway and not preview:
                await self._owned(kube, "HTTPRoute", route.service, route)
                weights = {b.color: b.weight for b in split.backends}
                await kube.apply(m.http_route(route, weights))
        except (KubeError, m.ManifestError) as exc:
            raise RouterError(str(exc)) from None
        self._applied[split.route] = split.options

    async def _owned(
        self, kube: Kube, kind: str, name: str, route: m.Route
    ) -> dict[str, Any] | None:
        """The object if it is this environment's; KubeError if another one owns it."""
        return await kube.owned(kind, name, m.selector(route.app, route.environment, route.service))

    async def remove(self, route: str) -> None:
        options = self._applied.pop(route, None)
        if options is None:
            # Not applied by this agent: it is left to the next apply, which takes it over.
            log.info("route %s was not applied by this agent: left in place", route)
            return
        r, preview, kube = self._route(route, options)
        name = m.preview_name(r.service) if preview else r.service
        try:
            if await self._owned(kube, "Service", name, r) is not None:
                await kube.delete("Service", name)
            if self.gateway and not preview and await self._owned(kube, "HTTPRoute", name, r):
                await kube.delete("HTTPRoute", name)
        except KubeError as exc:
            raise RouterError(str(exc)) from None

    async def inflight(self, route: str, color: str) -> int | None:
        return None

    async def counters(self, route: str) -> Mapping[str, ColorCounters] | None:
        return None

    async def shutdown(self) -> None:
        # The Services are the cluster's: they keep routing after conveyor is gone.
        for kube in self._kubes.values():
            await kube.close()
