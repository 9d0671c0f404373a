"""HAProxy as plain values: the configuration of one route, the runtime-API commands that put a
split in place, and the `show stat` CSV read back as conveyor's counters.

Pure (no sockets, no processes): routers/haproxy.py does the I/O, these are tested on their own.
Each route has its own HAProxy process (docs/haproxy.md says why), so the names inside one
configuration are fixed: frontend `fe`, backend `be`, one server per color.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.routers.base import Backend, ColorCounters, Split

BACKEND = "be"
# Declared in every configuration, so that a switch between them never needs a new process.
COLORS = ("blue", "green")
# Where a server that has no color running points: nothing listens on port 1, and a server with
# weight 0 in state drain never gets a request anyway.
PARKED = ("127.0.0.1", 1)
MAX_WEIGHT = 256  # HAProxy's largest server weight
# The counters of `show stat` that conveyor reads, per server (docs/haproxy.md maps them).
COUNTED = ("stot", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
ERRORS = ("eresp", "econ")
DEFAULTS: Mapping[str, Any] = {
    "binary": "/usr/sbin/haproxy",
    "maxconn": 4096,
    "threads": 1,
    "connect_timeout": 5.0,
    "server_timeout": 60.0,
    "client_timeout": 75.0,
    "request_timeout": 10.0,
}


class StatError(ValueError):
    """`show stat` answered something that is not its CSV."""


def settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """The HAProxy settings a split carries ([router.haproxy], see HaproxyRouter.options)."""
    given = options.get("haproxy")
    return {**DEFAULTS, **(given if isinstance(given, Mapping) else {})}


def weight(percent: int) -> int:
    """A split's percentage as an HAProxy weight (0..256); any share above 0 gets at least 1."""
    if percent <= 0:
        return 0
    return max(1, min(MAX_WEIGHT, round(percent * MAX_WEIGHT / 100)))


def servers(split: Split) -> tuple[str, ...]:
    """The servers the route's backend declares: blue and green always, any other color too."""
    extra = sorted({b.color for b in split.backends} - set(COLORS))
    return (*COLORS, *extra)


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True)
class Layout:
    """What a route's configuration is made of, apart from where each server points: if this
    is unchanged, a new split is applied through the runtime API alone."""

    host: str
    port: int
    servers: tuple[str, ...]
    settings: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, split: Split) -> Layout:
        return cls(
            split.host, split.port, servers(split), tuple(sorted(settings(split.options).items()))
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "servers": list(self.servers),
            "settings": dict(self.settings),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layout:
        return cls(
            str(data["host"]),
            int(data["port"]),
            tuple(str(s) for s in data["servers"]),
            tuple(sorted(dict(data["settings"]).items())),
        )


def config_text(split: Split, stats_socket: str) -> str:
    """The whole HAProxy configuration of one route, with its servers where `split` puts them."""
    s = settings(split.options)
    lines = [
        "# Written by conveyor for route " + split.route + "; it is replaced, not edited.",
        "global",
        f"    maxconn {int(s['maxconn'])}",
        f"    nbthread {int(s['threads'])}",
        # The runtime API: weights, states, addresses and `show stat`, without a reload; the
        # listening sockets are handed to a replacing process (-x) so no connection is refused.
        f"    stats socket {stats_socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 10s",
        # A replaced process finishes what it serves, but not forever.
        "    hard-stop-after 30s",
        "defaults",
        "    mode http",
        "    option forwardfor",
        "    option redispatch 1",  # a refused connect is retried on another live color
        "    retries 3",
        "    http-reuse safe",
        f"    timeout connect {_ms(s['connect_timeout'])}",
        f"    timeout server {_ms(s['server_timeout'])}",
        f"    timeout client {_ms(s['client_timeout'])}",
        f"    timeout http-keep-alive {_ms(s['client_timeout'])}",
        f"    timeout http-request {_ms(s['request_timeout'])}",
        "frontend fe",
        f"    bind {_address(split.host, split.port)}",
        f"    default_backend {BACKEND}",
        f"backend {BACKEND}",
        # No health checks: conveyor checks the colors itself and moves traffic away from them.
        "    balance roundrobin",
    ]
    live = {b.color: b for b in split.backends}
    for name in servers(split):
        b = live.get(name)
        if b is None or b.weight <= 0:
            host, port = (b.host, b.port) if b is not None else PARKED
            lines.append(f"    server {name} {_address(host, port)} weight 0")
        else:
            lines.append(f"    server {name} {_address(b.host, b.port)} weight {weight(b.weight)}")
    return "\n".join(lines) + "\n"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def commands(split: Split, declared: Sequence[str]) -> list[str]:
    """Runtime-API commands that put `split` in place on a backend declaring `declared`.

    The colors that take traffic are pointed and made ready first, then the others are set to
    drain: at no moment does the backend have no server for a new request.
    """
    out: list[str] = []
    live: list[Backend] = [b for b in split.backends if b.weight > 0]
    for b in live:
        out += [
            f"set server {BACKEND}/{b.color} addr {b.host} port {b.port}",
            f"set server {BACKEND}/{b.color} weight {weight(b.weight)}",
            f"set server {BACKEND}/{b.color} state ready",
        ]
    names = {b.color for b in live}
    for name in declared:
        if name not in names:
            out.append(f"set server {BACKEND}/{name} state drain")
    return out


def refusals(answer: str) -> list[str]:
    """What the runtime API refused in the answer to `;`-joined set commands (free text: an
    accepted `set` answers nothing, or how an address or port changed)."""
    accepted = ("no need to change", "IP changed", "port changed")
    return [
        line.strip()
        for line in answer.splitlines()
        if line.strip() and not line.strip().startswith(accepted)
    ]


def parse_stat(text: str) -> list[dict[str, str]]:
    """`show stat` CSV: one dict per row, keyed by the header's field names."""
    if not text.startswith("# "):
        raise StatError(f"show stat answered {text[:80]!r}")
    reader = csv.reader(io.StringIO(text[2:]))
    header = next(reader)
    return [dict(zip(header, row, strict=False)) for row in reader if row]


def _int(row: Mapping[str, str], key: str) -> int:
    value = row.get(key, "")
    return int(value) if value.strip().isdigit() else 0


def server_rows(rows: Iterable[Mapping[str, str]]) -> dict[str, Mapping[str, str]]:
    """The backend's server rows by server (color) name."""
    return {
        r["svname"]: r
        for r in rows
        if r.get("pxname") == BACKEND and r.get("svname") not in ("FRONTEND", "BACKEND")
    }


def raw_counters(row: Mapping[str, str]) -> dict[str, int]:
    """The cumulative fields conveyor keeps of one server row (added up across processes)."""
    return {key: _int(row, key) for key in (*COUNTED, *ERRORS)}


def add(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in {*a, *b}}


def color_counters(raw: Mapping[str, int], inflight: int) -> ColorCounters:
    """HAProxy's fields as conveyor's counters: the built-in analysis reads them unchanged.

    requests = stot (in http mode one stream per request); responses by class from hrsp_*;
    upstream_errors = eresp (response errors: the 502s HAProxy answered, responses cut off) +
    econ (connections that failed after the retries). No latency histogram: HAProxy keeps
    averages, so `latency_p99_ms` is refused with this router at config load.
    """
    responses = {f"{n}xx": raw.get(f"hrsp_{n}xx", 0) for n in range(1, 6)}
    responses["other"] = raw.get("hrsp_other", 0)
    return ColorCounters(
        requests=raw.get("stot", 0),
        responses=responses,
        upstream_errors=raw.get("eresp", 0) + raw.get("econ", 0),
        inflight=inflight,
        latency_buckets=[],
        latency_sum=0.0,
    )


def inflight(row: Mapping[str, str]) -> int:
    """Requests on that server now (scur) and waiting for it (qcur)."""
    return _int(row, "scur") + _int(row, "qcur")
