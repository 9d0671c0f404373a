"""What a router is: the traffic split it applies and the protocol the engine drives.

A router puts one public address in front of the colors of a service and moves traffic between
them: the built-in proxy today, HAProxy's runtime API or a Kubernetes Service selector tomorrow.
It declares what it can do in `features` (the names are in routers/kinds.py), so configuration can refuse a rollout it cannot carry
out (a canary on a router without weights) before anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict

if TYPE_CHECKING:
    from conveyor.config import ResolvedEnvironment


class RouterError(Exception):
    """The router refused a request (e.g. it cannot listen on the requested address)."""


class ProxyUnavailable(RouterError):
    """The router does not answer (not running, or not responding in time)."""


@dataclass(frozen=True)
class Backend:
    """One color behind a route, and its share of the traffic in percent."""

    color: str
    host: str
    port: int
    weight: int = 100

    def to_json(self) -> dict[str, Any]:
        return {"color": self.color, "host": self.host, "port": self.port, "weight": self.weight}


@dataclass(frozen=True)
class Split:
    """One route: a listen address and the colors behind it with their weights.

    `sticky` is {"cookie": name} or {"header": name} while two colors share a canary, else None.
    `options` are the router's own settings for this route (the built-in proxy's limits).
    `fallback` is the standby color while one runs: it takes no traffic, but a request the live
    color failed without answering may be retried on it (routers with the FALLBACK feature).
    """

    route: str  # "<environment>/<service>", or "<environment>/<service>:preview"
    host: str
    port: int
    backends: tuple[Backend, ...]
    sticky: Mapping[str, str] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    fallback: tuple[Backend, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.route,
            "host": self.host,
            "port": self.port,
            "backends": [b.to_json() for b in self.backends],
            "options": dict(self.options),
            "sticky": dict(self.sticky) if self.sticky is not None else None,
            "fallback": [b.to_json() for b in self.fallback],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Split:
        # "limits" is what conveyor 0.1 called the options in routes.json.
        options = data.get("options", data.get("limits", {}))
        sticky = data.get("sticky")
        return cls(
            route=str(data["name"]),
            host=str(data["host"]),
            port=int(data["port"]),
            backends=_backends(data["backends"]),
            sticky=dict(sticky) if sticky else None,
            options=dict(options or {}),
            fallback=_backends(data.get("fallback") or ()),  # absent in older routes.json
        )


def _backends(items: Any) -> tuple[Backend, ...]:
    return tuple(
        Backend(str(b["color"]), str(b["host"]), int(b["port"]), int(b.get("weight", 100)))
        for b in items
    )


class ColorCounters(TypedDict):
    """Cumulative counters of one color since the router started (what `counters` returns)."""

    requests: int
    responses: dict[str, int]  # by status class: "2xx", "5xx", ...
    # 502/504 the router answered, responses cut off mid-body, and requests this color failed
    # that were retried on the fallback
    upstream_errors: int
    inflight: int
    latency_buckets: list[tuple[str, int]]  # (upper bound in seconds or "+Inf", cumulative)
    latency_sum: float
    # Requests this color failed that the fallback took, by reason: "refused", "reset".
    retries: NotRequired[dict[str, int]]


class Router(Protocol):
    """Applies traffic splits. Every call returns in bounded time or raises RouterError."""

    name: str
    features: frozenset[str]

    def options(self, env: ResolvedEnvironment) -> Mapping[str, Any]:
        """The router's own settings for the routes of `env` (carried by each Split)."""
        ...

    async def ensure(self) -> bool:
        """Make sure the router runs; True if it had to be (re)started and lost its routes."""
        ...

    async def apply(self, split: Split) -> None:
        """Put this route in place, replacing the previous split of the same route at once."""
        ...

    async def remove(self, route: str) -> None: ...

    async def inflight(self, route: str, color: str) -> int | None:
        """Requests in flight on that color of that route; None if the router cannot tell."""
        ...

    async def counters(self, route: str) -> Mapping[str, ColorCounters] | None:
        """Counters per color of that route; None if it has no such route or does not count."""
        ...

    async def shutdown(self) -> None:
        """Stop the router, if it is conveyor's to stop."""
        ...


def route_name(environment: str, service: str) -> str:
    return f"{environment}/{service}"
