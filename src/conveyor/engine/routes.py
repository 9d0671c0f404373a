"""The route table the agent wants the proxy to serve, persisted beside the database.

The proxy keeps serving its last table when the agent dies; this file is what a restarted agent
pushes into a proxy that died too, so traffic comes back on the same colors and versions.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BackendSpec:
    color: str
    host: str
    port: int
    weight: int = 100


@dataclass(frozen=True)
class RouteSpec:
    name: str  # "<environment>/<service>"
    host: str
    port: int
    backends: tuple[BackendSpec, ...]
    limits: dict[str, Any] = field(default_factory=dict)
    # Canary stickiness: {"cookie": name} or {"header": name}; None when one color takes everything.
    sticky: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "backends": [asdict(b) for b in self.backends],
            "limits": self.limits,
            "sticky": self.sticky,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouteSpec:
        return cls(
            name=str(data["name"]),
            host=str(data["host"]),
            port=int(data["port"]),
            backends=tuple(BackendSpec(**b) for b in data["backends"]),
            limits=dict(data.get("limits", {})),
            sticky=data.get("sticky"),
        )


def route_name(environment: str, service: str) -> str:
    return f"{environment}/{service}"


class RouteTable:
    def __init__(self, path: Path) -> None:
        self._path = path
        self.routes: dict[str, RouteSpec] = {}

    def load(self) -> None:
        try:
            raw = json.loads(self._path.read_text())
        except FileNotFoundError:
            return
        self.routes = {r["name"]: RouteSpec.from_json(r) for r in raw.get("routes", [])}

    def put(self, route: RouteSpec) -> None:
        self.routes[route.name] = route
        self._save()

    def remove(self, name: str) -> None:
        if self.routes.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"routes": [r.to_json() for r in self.routes.values()]}))
        os.replace(tmp, self._path)
