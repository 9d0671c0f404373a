"""`python -m conveyor.proxy --control PATH --pidfile PATH`: run the proxy process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
from pathlib import Path

from conveyor.proxy.control import ControlServer, log
from conveyor.proxy.server import Proxy

DRAIN_TIMEOUT = 5.0


async def serve(control: Path, pidfile: Path) -> None:
    loop = asyncio.get_running_loop()
    proxy = Proxy(loop)
    stop = asyncio.Event()
    ctl = ControlServer(proxy, control, stop.set)
    await ctl.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The agent may die; the proxy must not die with it.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    _write_pidfile(pidfile)
    log(f"started, control socket {control}")
    # The cyclic GC's full collections walk every tracked object: with the ~20,000 of the
    # interpreter and the imported modules that is milliseconds, stalling every request in
    # flight (the p99 at moderate load). Those objects live as long as the process: freeze them
    # out of the collector's sight. Request objects mostly die by reference counting anyway.
    gc.freeze()
    try:
        await stop.wait()
        log("shutting down")
        ctl.close()
        await proxy.drain(DRAIN_TIMEOUT)
    finally:
        ctl.close()
        _remove_pidfile(pidfile)


def _write_pidfile(pidfile: Path) -> None:
    tmp = pidfile.with_name(pidfile.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(pidfile)


def _remove_pidfile(pidfile: Path) -> None:
    # Only our own: a successor may already have written its pid there.
    with contextlib.suppress(OSError, ValueError):
        if int(pidfile.read_text().strip()) == os.getpid():
            pidfile.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conveyor.proxy")
    parser.add_argument("--control", required=True, type=Path, help="control unix socket path")
    parser.add_argument("--pidfile", required=True, type=Path, help="pid file to write")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(args.control, args.pidfile))
    except (RuntimeError, OSError) as exc:
        log(f"fatal: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
