"""Picking a free TCP port on this host: for a local color's app, or a preview route's listener."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

# Private ports are picked below the kernel's ephemeral range: a port from that range can be
# taken as the source port of any outgoing connection (the proxy's own upstream connections,
# for one) between the moment it is picked and the moment the app binds it.
PRIVATE_PORTS_LOW = 10000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody is listening on right now, outside the ephemeral range when there is room."""
    high = _ephemeral_low() - 1
    if high - PRIVATE_PORTS_LOW >= 1000:
        for _ in range(64):
            port = random.randint(PRIVATE_PORTS_LOW, high)
            if _bindable(host, port):
                return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        found: int = s.getsockname()[1]
        return found


def bindable(host: str, port: int) -> bool:
    """Could a listener bind (host, port) right now, as asyncio's servers do (SO_REUSEADDR, so
    connections of an earlier listener still in TIME_WAIT do not count)?"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def holder(port: int) -> str | None:
    """Who listens on TCP `port` on this host: "pid 4711 (nginx: master process)", if visible.

    Reads /proc/net/tcp{,6} for a listening socket on the port, then looks for a process holding
    that socket. Processes of other users are invisible without privileges: then None.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # fields: sl local_address rem_address st ... inode (index 9); 0A is LISTEN
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return f"pid {pid} ({_command(pid)})"
            except OSError:
                continue
    return None


def _command(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    text = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return text[:80] or "?"
