"""Which router moves traffic: chosen by `[router] kind`, one small factory per kind.

Each router's module adds itself here by name; imports stay inside the factories, so a project
on the built-in proxy never imports a Kubernetes client. What each kind can do is plain data in
routers/kinds.py (configuration reads it without making a router).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conveyor.paths import Paths
from conveyor.routers.base import Router, RouterError

Factory = Callable[[Paths], Router]


def _builtin(paths: Paths, project_dir: Path | None = None) -> Router:
    from conveyor.routers.builtin import BuiltinRouter, configured_workers

    return BuiltinRouter(
        paths.home,
        paths.proxy_socket,
        paths.proxy_pidfile,
        paths.proxy_log,
        workers=lambda: configured_workers(project_dir),
    )


def _haproxy(paths: Paths) -> Router:
    from conveyor.routers.haproxy import HaproxyRouter

    return HaproxyRouter(paths.home, paths.logs / "haproxy.log")


def _kubernetes(paths: Paths) -> Router:
    from conveyor.routers.kubernetes import KubernetesRouter

    return KubernetesRouter()


def _gateway_api(paths: Paths) -> Router:
    from conveyor.routers.kubernetes import KubernetesRouter

    return KubernetesRouter(gateway=True)


FACTORIES: dict[str, Factory] = {
    "builtin": _builtin,
    "haproxy": _haproxy,
    "kubernetes": _kubernetes,
    "gateway-api": _gateway_api,
}


def make_router(kind: str, paths: Paths, project_dir: Path | None = None) -> Router:
    """`project_dir`: where conveyor.toml is, for the built-in proxy's `[proxy] workers`."""
    if kind == "builtin":
        return _builtin(paths, project_dir)
    factory = FACTORIES.get(kind)
    if factory is None:
        raise RouterError(f"unknown router {kind!r} (known: {', '.join(sorted(FACTORIES))})")
    return factory(paths)
