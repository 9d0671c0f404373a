"""`conveyor proxy status|reload|compile`: the built-in proxy's keeper and workers, and its
compiled hot path (docs/proxy.md)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from conveyor.cli.common import JsonOpt, app, project
from conveyor.cli.output import console, emit_json, fail

proxy_app = typer.Typer(
    help="The built-in proxy: its version and workers, and a reload without dropping a "
    "connection.\n\nExample:\n\n    conveyor proxy status",
    no_args_is_help=True,
)
app.add_typer(proxy_app, name="proxy")


def _since(started: float) -> str:
    seconds = max(0, int(time.time() - started))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _status(control: Any) -> dict[str, Any] | None:
    import asyncio

    from conveyor.routers.base import ProxyUnavailable, RouterError
    from conveyor.routers.builtin import ProxyClient

    try:
        return asyncio.run(ProxyClient(control).call({"op": "status"}))
    except ProxyUnavailable:
        return None
    except RouterError as exc:
        # A proxy of a conveyor from before `status`: it still answers ping.
        fail(f"the running proxy cannot report its workers ({exc}): `conveyor proxy reload`", 1)


@proxy_app.command("status")
def proxy_status(json_out: JsonOpt = False) -> None:
    """Show the proxy's conveyor version, its keeper's pid, and each worker: pid, open
    connections, requests served, restarts, and since when it runs. Exit 1 when no proxy runs.

    Example:

        conveyor proxy status --json
    """
    from conveyor import __version__

    proj = project()
    status = _status(proj.paths.proxy_socket)
    if status is None:
        fail("no proxy runs for this project (the agent starts it: `conveyor agent start`)", 1)
    status.pop("ok", None)
    status["installed"] = __version__
    if json_out:
        emit_json(status)
        return
    workers = status["workers"]
    line = (
        f"proxy pid {status['pid']}, conveyor {status['version']}, up {_since(status['started_at'])},"
        f" {len(workers)} worker(s)"
    )
    if status["version"] != __version__:
        line += f" (installed: {__version__}: `conveyor proxy reload`)"
    console.print(line, markup=False, soft_wrap=True)
    for w in workers:
        console.print(
            f"  worker {w['slot']}: pid {w['pid']}, up {_since(w['started_at'])}, "
            f"{w['connections']} connection(s), {w['requests']} request(s), "
            f"{w['restarts']} restart(s), hot path {w.get('hot_path', 'interpreted')}",
            markup=False,
            soft_wrap=True,
        )


@proxy_app.command("reload")
def proxy_reload(
    drain_timeout: Annotated[
        str | None,
        typer.Option(
            "--drain-timeout",
            help="How long the old workers may take to finish their requests, e.g. 30s "
            "(default: [rollout] drain_timeout).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Replace the running proxy by one of the conveyor installed now, without refusing or
    dropping a connection: the new keeper takes the listening sockets and the routes over the
    control socket, the old workers stop accepting, finish their requests and exit.

    Example:

        pip install -U conveyor-deploy && conveyor proxy reload
    """
    from conveyor.core.durations import parse_duration
    from conveyor.routers.base import ProxyUnavailable
    from conveyor.routers.builtin import reload_proxy

    given: float | None = None
    if drain_timeout is not None:
        try:
            given = parse_duration(drain_timeout)
        except ValueError as exc:
            fail(f"--drain-timeout: {exc}")
    proj = project()
    cfg = proj.config()
    timeout = cfg.rollout.drain_timeout if given is None else given
    paths = proj.paths
    before = _status(paths.proxy_socket)
    if before is None:
        fail("no proxy runs for this project (the agent starts it: `conveyor agent start`)", 1)
    try:
        old, new = reload_proxy(
            paths.home,
            paths.proxy_socket,
            paths.proxy_pidfile,
            paths.proxy_log,
            workers=cfg.proxy.workers,
            drain_timeout=timeout,
        )
    except ProxyUnavailable as exc:
        fail(f"reload failed, the running proxy goes on serving: {exc}", 1)
    after = _status(paths.proxy_socket) or {}
    workers = len(after.get("workers", []))
    result: dict[str, Any] = {
        "old": {"pid": old, "version": before.get("version")},
        "new": {
            "pid": new,
            "version": after.get("version"),
            "workers": len(after.get("workers", [])),
        },
        "drain_timeout": timeout,
    }
    if json_out:
        emit_json(result)
        return
    console.print(
        f"proxy reloaded: pid {old} (conveyor {before.get('version')}) -> pid {new} "
        f"(conveyor {after.get('version')}, {workers} worker(s)); the old "
        f"workers finish their requests (up to {timeout:g}s) and exit",
        markup=False,
        soft_wrap=True,
    )


@proxy_app.command("compile")
def proxy_compile(
    force: Annotated[
        bool, typer.Option("--force", help="Build again even when a build of these sources exists.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Compile the proxy's hot path with mypyc (about a fifth less CPU per request). The build
    is for the sources installed now; proxies started afterwards use it (a running one:
    `conveyor proxy reload`). Needs a C compiler, Python's headers and mypy; exit 1 saying what
    is missing otherwise, and the proxy keeps running interpreted.

    Example:

        conveyor proxy compile && conveyor proxy reload
    """
    from conveyor.proxy import native

    if not json_out and (force or not (native.build_dir() / "manifest.json").is_file()):
        console.print("compiling the proxy's hot path (mypyc; about 15 s)...", markup=False)
    try:
        where, built = native.compile_hot_path(force=force)
    except native.BuildError as exc:
        fail(str(exc), 1)
    result = {"path": str(where), "built": built, "modules": list(native.MODULES)}
    if json_out:
        emit_json(result)
        return
    verb = "compiled" if built else "already compiled"
    console.print(
        f"{verb}: {where}; proxies started from now on use it "
        "(`conveyor proxy reload` for the running one)",
        markup=False,
        soft_wrap=True,
    )
