"""What the engine needs from a router: put a route in place, take it away, read counters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class RouterError(Exception):
    """The router refused a request (e.g. it cannot listen on the requested address)."""


class ProxyUnavailable(RouterError):
    """The router process does not answer (not running, or not responding in time)."""


@dataclass(frozen=True)
class Backend:
    color: str
    host: str
    port: int
    weight: int = 100

    def to_json(self) -> dict[str, Any]:
        return {"color": self.color, "host": self.host, "port": self.port, "weight": self.weight}


class Router(Protocol):
    async def ping(self) -> dict[str, Any]: ...

    async def set_route(
        self,
        name: str,
        listen: tuple[str, int],
        backends: Sequence[Backend],
        limits: Mapping[str, Any] | None = None,
        sticky: Mapping[str, str] | None = None,
    ) -> None: ...

    async def remove_route(self, name: str) -> None: ...

    async def stats(self) -> dict[str, Any]: ...
