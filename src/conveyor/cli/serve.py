"""`conveyor serve`: the HTTP API and the dashboard (FastAPI on uvicorn, in this process).

Loopback only unless told otherwise: listening on any other address needs TLS (`--tls-cert` and
`--tls-key`) or an explicit `--insecure`, since tokens travel in every request.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli.common import Command, app, project
from conveyor.cli.output import console, fail


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _readable(path: Path, what: str) -> None:
    try:
        path.read_bytes()
    except OSError as exc:
        fail(f"{what} {path}: {exc.strerror or exc}")


@app.command(cls=Command)
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8400,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="TLS certificate (PEM) for HTTPS.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="The certificate's private key (PEM).")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Allow plain HTTP on a non-loopback address (tokens in clear)."
        ),
    ] = False,
    keepalive: Annotated[
        str,
        typer.Option(metavar="DURATION", help="Keep-alive comment interval on the event stream."),
    ] = "15s",
    install_unit: Annotated[
        bool,
        typer.Option(
            "--install-unit",
            help="Instead of serving, write a systemd unit that runs this same command and "
            "restarts it whenever it ends.",
        ),
    ] = False,
    user_unit: Annotated[
        bool,
        typer.Option("--user", help="With --install-unit: a user unit (systemctl --user)."),
    ] = False,
    print_unit: Annotated[
        bool,
        typer.Option("--print-unit", help="With --install-unit: print the unit, write nothing."),
    ] = False,
) -> None:
    """Run the HTTP API (/api/v1, described at /api/v1/openapi.json) and the dashboard. Every
    request needs a token (`conveyor tokens create`); actions go through the project's agent,
    as the CLI's do. Ctrl-C or SIGTERM stops it.

    Example:

        conveyor serve --port 8400

        conveyor serve --port 8400 --install-unit --user   # kept running by systemd
    """
    from conveyor.core.durations import parse_duration

    if (tls_cert is None) != (tls_key is None):
        fail("TLS needs both --tls-cert and --tls-key")
    tls = tls_cert is not None and tls_key is not None
    if not is_loopback(host) and not tls and not insecure:
        fail(
            f"refusing to listen on {host} without TLS: give --tls-cert and --tls-key, "
            "or --insecure to send tokens in clear"
        )
    if not 0 <= port <= 65535:
        fail(f"--port {port} is not a port number (0-65535)")
    try:
        every = parse_duration(keepalive)
    except ValueError as exc:
        fail(f"--keepalive: {exc}")
    if every <= 0:
        fail("--keepalive must be longer than 0s")
    if tls_cert is not None and tls_key is not None:
        _readable(tls_cert, "cannot read the TLS certificate")
        _readable(tls_key, "cannot read the TLS key")
    if (user_unit or print_unit) and not install_unit:
        fail("--user and --print-unit go with --install-unit")
    proj = project()
    cfg = proj.config()  # a broken conveyor.toml: said now (exit 2), not on every request
    if install_unit:
        args = ["--host", host, "--port", str(port), "--keepalive", keepalive]
        if tls_cert is not None and tls_key is not None:
            args += ["--tls-cert", str(tls_cert.resolve()), "--tls-key", str(tls_key.resolve())]
        if insecure:
            args.append("--insecure")
        _install_unit(cfg.app.name, proj.dir, args, user_unit, print_unit)
        return
    _run(proj.dir, host, port, tls_cert, tls_key, every)


def _install_unit(
    app_name: str, project_dir: Path, args: list[str], user_unit: bool, print_only: bool
) -> None:
    import getpass
    import os
    import sys

    from conveyor.agent import systemd

    text = systemd.serve_unit_text(
        app=app_name,
        project_dir=project_dir,
        python=sys.executable,
        user=None if user_unit else getpass.getuser(),
        path_env=os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        conveyor_home=os.environ.get("CONVEYOR_HOME"),
        serve_args=args,
    )
    if print_only:
        sys.stdout.write(text)
        return
    try:
        target = systemd.install(text, app_name, user_unit, Path.home(), role="serve")
    except OSError as exc:
        fail(str(exc), 1)
    console.print(f"wrote {target}", markup=False)
    console.print(f"next: {systemd.next_steps(app_name, user_unit, role='serve')}", markup=False)


def _run(
    project_dir: Path,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    keepalive: float,
) -> None:
    import uvicorn

    from conveyor.api.app import create_app
    from conveyor.api.state import Settings

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1)
    sock.listen(512)
    bound = sock.getsockname()[1]
    settings = Settings(
        project_dir=project_dir, tls=tls_cert is not None, keepalive=keepalive, freeze_heap=True
    )
    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        timeout_graceful_shutdown=3,  # event streams never end by themselves
        proxy_headers=False,  # the source address in the audit log is the peer's, not a header's
    )
    scheme = "https" if tls_cert else "http"
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"conveyor API and dashboard on {scheme}://{shown}:{bound} (Ctrl-C to stop)",
        markup=False,
        soft_wrap=True,
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM and Ctrl-C, then raises the signal again for the
    # handlers it found: with these, that ends here and `serve` exits 0 (a clean stop).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    console.print("conveyor serve stopped", markup=False)
