"""Adoption after an agent restart, and the supervisor's periodic pass.

Traffic outlives the control plane: a new agent adopts the proxy and every process it can verify,
and brings back from the database whatever is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from conveyor.config import Config, ConfigError, ResolvedEnvironment, ServiceConfig
from conveyor.engine import rollback as rollback_mod
from conveyor.engine.errors import EngineError, UserError
from conveyor.health import probe_http
from conveyor.releases import ReleaseError, ReleaseStore
from conveyor.routers.base import ProxyUnavailable, RouterError
from conveyor.routers.builtin import start_proxy
from conveyor.runtimes.base import RuntimeStartError
from conveyor.store.db import InstanceRecord

if TYPE_CHECKING:
    from conveyor.engine.engine import Engine

log = logging.getLogger("conveyor.supervisor")

RESTART_ERRORS = (
    ConfigError,
    UserError,
    RuntimeStartError,
    ReleaseError,
    RouterError,
    ProxyUnavailable,
    OSError,
    KeyError,
)


async def ensure_proxy(engine: Engine) -> bool:
    """Adopt the running proxy, or start one and give it the last route table. True if started."""
    try:
        await engine.router.ping()
        return False
    except ProxyUnavailable:
        pass
    start_proxy(
        engine.paths.home,
        engine.paths.proxy_socket,
        engine.paths.proxy_pidfile,
        engine.paths.proxy_log,
    )
    for route in list(engine.routes.routes.values()):
        try:
            await engine.push(route)
        except (RouterError, ProxyUnavailable) as exc:
            log.error("could not restore route %s: %s", route.name, exc)
    return True


async def recover(engine: Engine) -> list[str]:
    """Called once when the agent starts: adopt what still runs, bring back what is missing."""
    notes: list[str] = []
    engine.routes.load()
    if await engine.ensure_proxy():
        notes.append("started the proxy and restored its routes")
    else:
        notes.append("adopted the running proxy")
    try:
        cfg = engine.config()
    except UserError as exc:
        notes.append(f"cannot read the configuration, services were not checked: {exc}")
        return notes
    interrupted = _in_progress(engine, cfg)
    why = "interrupted: the agent stopped during the deployment"
    for dep in interrupted:
        engine.store.finish_deployment(dep.id, "aborted", why, engine.utcnow())
        notes.append(f"deployment #{dep.id} was interrupted by an agent restart: aborted")
    for row in engine.store.instances(cfg.app.name):
        notes.extend(await _recover_instance(engine, cfg, row))
    for dep in interrupted:
        notes.extend(await _settle_interrupted(engine, cfg, dep.environment, dep.id, why))
    return notes


async def _settle_interrupted(
    engine: Engine, cfg: Config, env_name: str, deployment_id: int, why: str
) -> list[str]:
    """An interrupted deployment ends where it started: the version it replaced takes traffic.

    If it had switched already, its bake never finished: switch back to the standby. If it was
    part-way through a canary, its new colors are gone: the routes go back to the active colors.
    """
    rows = engine.store.instances(cfg.app.name, env_name)
    switched = any(r.role == "active" and r.deployment_id == deployment_id for r in rows)
    if switched and any(r.role == "standby" for r in rows):
        try:
            outcome = await rollback_mod.rollback(engine, env_name, lambda _e: None, reason=why)
            return [f"{env_name}: {outcome.reason}"]
        except EngineError as exc:
            return [f"{env_name}: could not switch back after the interruption: {exc}"]
    notes: list[str] = []
    env = cfg.environment(env_name)
    for row in rows:
        svc = env.services.get(row.service)
        if row.role != "active" or svc is None or svc.kind != "web" or row.port is None:
            continue
        wanted = engine.route_for(env, row.service, row.color, row.port)
        if engine.routes.routes.get(wanted.name) != wanted:
            try:
                await engine.push(wanted)
                notes.append(f"{wanted.name}: all traffic back on {row.version} ({row.color})")
            except (RouterError, ProxyUnavailable) as exc:
                notes.append(f"{wanted.name}: could not restore the route: {exc}")
    return notes


def _in_progress(engine: Engine, cfg: Config) -> list[Any]:
    found = []
    for env in _known_environments(engine, cfg):
        dep = engine.store.in_progress(cfg.app.name, env)
        if dep is not None:
            found.append(dep)
    return found


def _known_environments(engine: Engine, cfg: Config) -> set[str]:
    envs = set(cfg.environments) or {"dev"}
    envs.update(row.environment for row in engine.store.instances(cfg.app.name))
    return envs


async def _recover_instance(engine: Engine, cfg: Config, row: InstanceRecord) -> list[str]:
    what = f"{row.environment}/{row.service} {row.version} ({row.color})"
    inst = engine.instance(row)
    if row.role == "starting":
        # Its deployment died with the previous agent: it never took traffic.
        await engine.stop_row(row, 5.0)
        return [f"stopped {what}: its deployment was interrupted"]
    if inst is not None and engine.runtime.alive(inst):
        engine.handles[(row.environment, row.service, row.color)] = inst
        return [f"adopted {what}, pid {row.pid}"]
    if row.role == "standby" and row.standby_until and row.standby_until <= engine.utcnow():
        engine.store.delete_instance(row.app, row.environment, row.service, row.color)
        return [f"dropped {what}: its standby time is over"]
    try:
        await restart(engine, cfg.environment(row.environment), row)
    except RESTART_ERRORS as exc:
        return [f"could not bring back {what}: {exc}"]
    return [f"restarted {what}: it was not running"]


async def restart(engine: Engine, env: ResolvedEnvironment, row: InstanceRecord) -> None:
    release = engine.store.get_release(row.app, row.version)
    if release is None:
        raise ReleaseError(f"release {row.version} is missing")
    tree = ReleaseStore(engine.paths.home, engine.store, row.app).tree(release)
    port = row.port
    if port is not None and not port_free(port):
        port = None  # someone took it meanwhile: a fresh port, and the route follows
    inst = engine.spawn(env, row.service, row.color, row.version, tree, port=port)
    engine.store.upsert_instance(
        engine.row(
            env.name,
            row.service,
            row.color,
            release,
            inst,
            row.role,
            row.deployment_id,
            row.standby_until,
        )
    )
    if row.role == "active" and inst.port is not None and env.services[row.service].kind == "web":
        await engine.push(engine.route_for(env, row.service, row.color, inst.port))


async def supervise_once(engine: Engine) -> list[str]:
    """One pass of the supervisor: the proxy is up, active colors run, standby time is kept."""
    notes: list[str] = []
    try:
        if await engine.ensure_proxy():
            notes.append("the proxy was not answering: restarted it and restored its routes")
    except (RouterError, OSError) as exc:
        notes.append(f"could not restart the proxy: {exc}")
    try:
        cfg = engine.config()
    except UserError:
        return notes
    now = engine.utcnow()
    notes.extend(await watch_standby_window(engine, cfg))
    for row in engine.store.instances(cfg.app.name):
        if row.environment in engine.busy or row.role == "starting":
            continue
        what = f"{row.environment}/{row.service} {row.version} ({row.color})"
        if row.role == "standby" and row.standby_until is not None and row.standby_until <= now:
            svc = _service_config(cfg, row)
            await engine.stop_row(row, svc.stop_timeout if svc else 10.0)
            notes.append(f"stopped standby {what}: its standby time is over")
        elif row.role == "active" and not engine.alive(row):
            key = (row.environment, row.service, row.color)
            count, last = engine.restarts.get(key, (0, 0.0))
            backoff = min(30.0, 0.5 * 2**count)
            if engine.now() - last < backoff:
                continue
            engine.restarts[key] = (count + 1, engine.now())
            try:
                await restart(engine, cfg.environment(row.environment), row)
                notes.append(f"restarted {what}: it had exited")
            except RESTART_ERRORS as exc:
                notes.append(f"could not restart {what}: {exc}")
        elif row.role == "standby" and not engine.alive(row):
            engine.store.delete_instance(row.app, row.environment, row.service, row.color)
            notes.append(f"standby {what} exited: a rollback will redeploy instead")
    return notes


async def watch_standby_window(engine: Engine, cfg: Config) -> list[str]:
    """While the previous version is on standby, a failing new version is switched back at once.

    The bake is over, but a release that crashes or fails `unhealthy_threshold` health checks in a
    row while its predecessor still runs is rolled back automatically, not restarted.
    """
    notes: list[str] = []
    rows = engine.store.instances(cfg.app.name)
    standby = {(r.environment, r.service) for r in rows if r.role == "standby" and engine.alive(r)}
    for row in rows:
        key = (row.environment, row.service, row.color)
        if row.role != "active" or (row.environment, row.service) not in standby:
            engine.watch.pop(key, None)
            continue
        if row.environment in engine.busy:
            continue
        svc = _service_config(cfg, row)
        if svc is None or svc.kind != "web" or row.port is None:
            continue
        if not engine.alive(row):
            why = f"{row.service} {row.version} ({row.color}) exited during the standby window"
        else:
            ok, detail = await probe_http(
                "127.0.0.1", row.port, svc.health.path, svc.health.timeout
            )
            failures = 0 if ok else engine.watch.get(key, 0) + 1
            engine.watch[key] = failures
            if failures < svc.health.unhealthy_threshold:
                continue
            why = (
                f"{row.service} {row.version} ({row.color}) failed {failures} health checks in a "
                f"row during the standby window (last: {detail})"
            )
        engine.watch.pop(key, None)
        log.warning("automatic rollback of %s: %s", row.environment, why)
        try:
            outcome = await rollback_mod.rollback(
                engine, row.environment, lambda _e: None, reason=f"automatic rollback: {why}"
            )
            notes.append(f"{row.environment}: {outcome.reason} ({why})")
        except EngineError as exc:
            notes.append(f"{row.environment}: automatic rollback failed: {exc}")
    return notes


def _service_config(cfg: Config, row: InstanceRecord) -> ServiceConfig | None:
    try:
        return cfg.environment(row.environment).services.get(row.service)
    except ConfigError:
        return None


async def shutdown(engine: Engine, keep_running: bool) -> None:
    """Stop services and the proxy, unless they should keep serving through an agent upgrade."""
    if keep_running:
        return
    cfg_app = engine._app
    rows = engine.store.instances(cfg_app) if cfg_app else []
    await asyncio.gather(*(_stop_keep_row(engine, row) for row in rows), return_exceptions=True)
    with contextlib.suppress(RouterError, ProxyUnavailable):
        await engine.router.shutdown()


async def _stop_keep_row(engine: Engine, row: InstanceRecord) -> None:
    # The rows stay: they are the desired state a later `agent start` brings back.
    inst = engine.handles.pop((row.environment, row.service, row.color), None) or engine.instance(
        row
    )
    if inst is not None:
        await engine.runtime.stop(inst, 10.0)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
