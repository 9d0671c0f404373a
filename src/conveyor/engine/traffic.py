"""Traffic: the routes the agent wants, pushed to the router, and draining in-flight requests.

The route table is persisted beside the database (routes.json): the router keeps serving its last
table when the agent dies, and this file is what a restarted agent pushes into a router that lost
its routes, so traffic comes back on the same colors and versions.

While a standby color runs, it is its route's fallback (`Split.fallback`, for routers with the
FALLBACK feature): the router may retry there a request the live color failed without answering,
so a release that dies costs no request while the switch back is on its way. The deployment
names the standby when it switches (`push(..., standby=)`); whoever stops or loses a standby says
so (`standby_gone`); every other push keeps the route's fallback, unless its color takes traffic
again (a switch back), which ends its standby.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from conveyor.config import ResolvedEnvironment
from conveyor.engine.errors import UserError
from conveyor.ports import bindable, holder
from conveyor.routers.base import (
    Backend,
    ColorCounters,
    ProxyUnavailable,
    Router,
    RouterError,
    Split,
    route_name,
)
from conveyor.routers.kinds import FALLBACK
from conveyor.runtimes.base import Endpoint

log = logging.getLogger("conveyor.traffic")

# What a failed router call raises.
ROUTER_ERRORS = (RouterError, ProxyUnavailable, OSError)
DRAIN_POLL = 0.02


class RouteTable:
    """The splits the router should serve, saved atomically on every change."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.routes: dict[str, Split] = {}

    def load(self) -> None:
        try:
            raw = json.loads(self._path.read_text())
        except FileNotFoundError:
            return
        self.routes = {r["name"]: Split.from_json(r) for r in raw.get("routes", [])}

    def put(self, split: Split) -> None:
        self.routes[split.route] = split
        self._save()

    def remove(self, name: str) -> None:
        if self.routes.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"routes": [r.to_json() for r in self.routes.values()]}))
        os.replace(tmp, self._path)


class Traffic:
    def __init__(self, router: Router, table: Path, now: Callable[[], float]) -> None:
        self.router = router
        self.table = RouteTable(table)
        self._now = now

    # --- computing routes -------------------------------------------------------------------

    @staticmethod
    def backend(color: str, endpoint: Endpoint, weight: int = 100) -> Backend:
        return Backend(color, endpoint.host, endpoint.port, weight)

    def split(
        self,
        env: ResolvedEnvironment,
        service: str,
        backends: tuple[Backend, ...],
        sticky: Mapping[str, str] | None = None,
        preview_port: int | None = None,
    ) -> Split:
        """The route of one service of `env` (or its preview route) to these backends."""
        svc = env.services[service]
        assert svc.port is not None
        name = route_name(env.name, service)
        return Split(
            route=name if preview_port is None else f"{name}:preview",
            host=svc.listen,
            port=svc.port if preview_port is None else preview_port,
            backends=backends,
            sticky=sticky,
            options=self.router.options(env),
        )

    def single(
        self, env: ResolvedEnvironment, service: str, color: str, endpoint: Endpoint
    ) -> Split:
        """All traffic of the service to one color."""
        return self.split(env, service, (self.backend(color, endpoint),))

    def check_ports(self, env: ResolvedEnvironment, config_file: Path) -> None:
        """Before anything starts: every public port is ours already or free, and two environments
        of one app never share one. The routers we have listen on this host; the check names
        whoever holds a port when it can be seen."""
        ours = {(split.host, split.port) for split in self.table.routes.values()}
        for svc_name, svc in env.services.items():
            if svc.kind != "web":
                continue
            assert svc.port is not None
            wanted = [("port", svc.port)]
            if svc.preview_port is not None and not env.rollout.auto_promote:
                wanted.append(("preview_port", svc.preview_port))
            for key, port in wanted:
                if (svc.listen, port) in ours or bindable(svc.listen, port):
                    continue
                who = holder(port)
                raise UserError(
                    f"{config_file}: services.{svc_name}.{key}: port {port} on {svc.listen} is "
                    f"{f'held by {who}' if who else 'already in use'}; stop it or set "
                    f"services.{svc_name}.{key} to a free port"
                )
            for split in self.table.routes.values():
                other_env, other_svc = split.route.split("/", 1)
                if other_env == env.name:
                    continue
                if split.port == svc.port and split.host == svc.listen:
                    raise UserError(
                        f"{config_file}: services.{svc_name}.port: port "
                        f"{svc.port} is already served by environment {other_env!r} "
                        f"(service {other_svc}); set environments.{env.name}.services."
                        f"{svc_name}.port to another port"
                    )

    # --- acting ---------------------------------------------------------------------------------

    async def push(self, split: Split, standby: Backend | None = None) -> None:
        """Put `split` in place. Its fallback: `standby` when given, else the route's current one.

        A fallback whose color is among the split's backends with weight > 0 is dropped: that
        color takes traffic now (switched back), it is nobody's standby any more.
        """
        if standby is not None:
            spare: tuple[Backend, ...] = (standby,)
        else:
            current = self.table.routes.get(split.route)
            spare = current.fallback if current is not None else ()
        live = {b.color for b in split.backends if b.weight > 0}
        spare = tuple(b for b in spare if b.color not in live)
        if FALLBACK not in self.router.features:
            spare = ()
        if spare != split.fallback:
            split = replace(split, fallback=spare)
        await self.router.apply(split)
        self.table.put(split)

    async def standby_gone(self, environment: str, service: str, color: str) -> None:
        """That standby color is stopping or has stopped: its route no longer falls back on it.

        Called before stopping it, so that no retry goes to a process on its way out (or to
        whatever takes its port next). A router that cannot be told is logged, not raised: the
        table is right for the next push and for a restarted router.
        """
        route = route_name(environment, service)
        current = self.table.routes.get(route)
        if current is None or all(b.color != color for b in current.fallback):
            return
        split = replace(current, fallback=tuple(b for b in current.fallback if b.color != color))
        self.table.put(split)
        try:
            await self.router.apply(split)
        except ROUTER_ERRORS as exc:
            log.error("could not remove the fallback %s of %s: %s", color, route, exc)

    async def standby_moved(
        self, environment: str, service: str, color: str, endpoint: Endpoint
    ) -> None:
        """That standby color was started again (agent restart), maybe at another address."""
        current = self.table.routes.get(route_name(environment, service))
        if current is not None and any(b.color == color for b in current.fallback):
            await self.push(current, standby=self.backend(color, endpoint))

    async def remove(self, route: str) -> None:
        await self.router.remove(route)
        self.table.remove(route)

    def has(self, route: str) -> bool:
        return route in self.table.routes

    def current(self, route: str) -> Split | None:
        return self.table.routes.get(route)

    async def ensure(self) -> tuple[bool, list[str]]:
        """The router runs; if it had to be started, it gets the route table again.

        Returns (started, errors of routes that could not be restored).
        """
        if not await self.router.ensure():
            return False, []
        errors = []
        for split in list(self.table.routes.values()):
            try:
                await self.router.apply(split)
            except ROUTER_ERRORS as exc:
                errors.append(f"could not restore route {split.route}: {exc}")
        return True, errors

    async def drain(self, env: ResolvedEnvironment, colors: tuple[tuple[str, str], ...]) -> int:
        """Wait until no request is in flight on these (service, color)s; return how many are left.

        Bounded by the environment's drain_timeout. A router that cannot count in-flight requests
        is given the whole timeout, since nothing tells us sooner that the colors are idle.
        """
        deadline = self._now() + env.rollout.drain_timeout
        pending = {(route_name(env.name, s), c) for s, c in colors}
        left = 0
        while pending and self._now() < deadline:
            counts: dict[tuple[str, str], int] = {}
            try:
                for route, color in pending:
                    n = await self.router.inflight(route, color)
                    counts[(route, color)] = 1 if n is None else n
            except ROUTER_ERRORS:
                break
            pending = {key for key, n in counts.items() if n > 0}
            left = sum(counts.values())
            if pending:
                await asyncio.sleep(DRAIN_POLL)
        return left if pending else 0

    async def counters(self) -> dict[str, Mapping[str, ColorCounters]]:
        """Counters of every route in the table, for the admin endpoint's /metrics."""
        out: dict[str, Mapping[str, ColorCounters]] = {}
        for route in list(self.table.routes):
            found = await self.router.counters(route)
            if found:
                out[route] = found
        return out
