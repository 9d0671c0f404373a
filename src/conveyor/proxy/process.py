"""`python -m conveyor.proxy --control PATH --pidfile PATH [--workers auto|N] [--takeover]`.

(__main__.py loads the compiled hot path first, then runs `main` here.)

Runs the keeper (keeper.py), which runs the workers: `python -m conveyor.proxy --worker FD`.
With `--takeover` the new keeper takes the listening sockets and the routes of the one running on
the control socket (a reload: `conveyor proxy reload`), which then drains and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
from pathlib import Path

from conveyor import __version__
from conveyor.proxy import native
from conveyor.proxy.control import log
from conveyor.proxy.handover import KeeperControl, take_over
from conveyor.proxy.keeper import Keeper

DRAIN_TIMEOUT = 5.0
# A reload's old workers close an idle keep-alive connection after it was idle this long: a busy
# one gets its next request answered with `Connection: close` first (server.Proxy.drain). Closing
# an idle connection races a request the client may be sending on it; the longer the grace, the
# rarer a client that pauses that long and then sends exactly then (1 s did lose a request when
# a loaded machine stalled the client for a second). Bounded by the drain timeout.
RELOAD_GRACE = 5.0


def workers_count(value: str) -> int:
    if value == "auto":
        return max(1, min(8, len(os.sched_getaffinity(0))))
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be "auto" or a number, got {value!r}') from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"must be between 1 and 64, got {n}")
    return n


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    keeper = Keeper(args.workers, args.report_version or __version__)
    stop = asyncio.Event()
    ctl = KeeperControl(keeper, args.control, stop.set)
    old = None
    if args.takeover:
        old = await take_over(keeper, str(args.control))
    try:
        await ctl.start(takeover=args.takeover)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # The agent may die; the proxy must not die with it.
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        await keeper.start_workers()
    except BaseException:
        if old is not None:
            old.close()  # the old proxy goes on serving
        ctl.close()
        await keeper.shutdown(0.0)
        raise
    if old is not None:
        ctl.publish()
    _write_pidfile(args.pidfile)
    if old is not None:
        await old.send(
            {
                "op": "ready",
                "pid": os.getpid(),
                "timeout": args.drain_timeout,
                "grace": RELOAD_GRACE,
            }
        )
    log(f"started (conveyor {keeper.version}, {keeper.nworkers} worker(s)), control {args.control}")
    hot = native.STATE
    log(f"hot path: {hot.label()}" + (f" ({hot.reason})" if hot.reason else f" ({hot.path})"))
    # The cyclic GC's full collections walk every tracked object: freeze the interpreter's and
    # the imports' out of its sight (the workers do the same; see worker.py).
    gc.freeze()
    handed = asyncio.ensure_future(ctl.handed_over.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait((handed, stopped), return_when=asyncio.FIRST_COMPLETED)
    handed.cancel()
    stopped.cancel()
    try:
        if not ctl.handed_over.is_set():
            log("shutting down")
            ctl.close()
            await keeper.shutdown(DRAIN_TIMEOUT)
        else:
            log("reload done: exiting")
    finally:
        ctl.close()
        _remove_pidfile(args.pidfile)


def _write_pidfile(pidfile: Path) -> None:
    tmp = pidfile.with_name(pidfile.name + f".{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(pidfile)


def _remove_pidfile(pidfile: Path) -> None:
    # Only our own: a successor may already have written its pid there.
    with contextlib.suppress(OSError, ValueError):
        if int(pidfile.read_text().strip()) == os.getpid():
            pidfile.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conveyor.proxy")
    parser.add_argument("--control", type=Path, help="control unix socket path")
    parser.add_argument("--pidfile", type=Path, help="pid file to write")
    parser.add_argument(
        "--workers",
        type=workers_count,
        default="auto",
        help='worker processes: "auto" (usable cores, at most 8) or a number',
    )
    parser.add_argument(
        "--takeover",
        action="store_true",
        help="take the sockets and routes of the proxy running on --control (a reload)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="with --takeover: how long the old workers may take to finish their requests",
    )
    # Tests: look like another conveyor version (the agent reloads such a proxy).
    parser.add_argument("--report-version", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--table", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    if args.worker is not None:
        from conveyor.proxy.worker import serve as serve_worker

        runner(serve_worker(args.worker, args.table))
        return 0
    if args.control is None or args.pidfile is None:
        parser.error("--control and --pidfile are required")
    if isinstance(args.workers, str):
        args.workers = workers_count(args.workers)
    try:
        runner(serve(args))
    except (RuntimeError, OSError) as exc:
        log(f"fatal: {exc}")
        return 1
    return 0
