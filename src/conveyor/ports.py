"""Picking a free TCP port on this host: for a local color's app, or a preview route's listener."""

from __future__ import annotations

import random
import socket

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
