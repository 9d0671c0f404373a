"""Route table entries, limits and per-colour counters of the proxy.

Everything a request reads at dispatch time is immutable (`Route`, `Backend`, `Limits`), so a
route swap is a single dict assignment and a request never sees half of an update. Counters are
the exception: they are plain mutable ints in one small object per (route name, colour), shared by
every `Backend` of that colour across swaps so that counts survive them.
"""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field, fields
from typing import Any

# Upper bounds (seconds) of the latency histogram; the last bucket is +Inf.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class ConfigurationError(ValueError):
    """A control request carried a route or limits the proxy cannot use."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The `ProxyConfig` fields that matter to the data path (same names, same defaults)."""

    max_request_line: int = 8192
    max_header_size: int = 65536
    max_headers: int = 100
    connect_timeout: float = 5.0
    upstream_timeout: float = 60.0
    retries: int = 3

    @classmethod
    def from_json(cls, obj: object) -> Limits:
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise ConfigurationError("limits must be an object")
        values: dict[str, Any] = {}
        # Unknown keys are ignored on purpose: the agent may send a whole ProxyConfig dump.
        for f in fields(cls):
            if f.name not in obj:
                continue
            raw = obj[f.name]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ConfigurationError(f"limits.{f.name} must be a number")
            if f.type == "int":
                if raw != int(raw):
                    raise ConfigurationError(f"limits.{f.name} must be an integer")
                raw = int(raw)
            if raw < 0 or (raw == 0 and f.name != "retries"):
                raise ConfigurationError(f"limits.{f.name} must be positive")
            values[f.name] = raw
        return cls(**values)

    def to_json(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class ColorStats:
    """Counters of one colour of one route. Plain ints: updated on every request."""

    __slots__ = ("buckets", "inflight", "latency_sum", "requests", "responses", "upstream_errors")

    def __init__(self) -> None:
        self.requests = 0
        # responses[0] counts 1xx ... responses[4] counts 5xx.
        self.responses = [0, 0, 0, 0, 0]
        self.upstream_errors = 0
        self.inflight = 0
        # Non-cumulative internally (one increment per observation); made cumulative on output.
        self.buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0

    def observe(self, status: int, seconds: float) -> None:
        cls = status // 100 - 1
        if 0 <= cls < 5:
            self.responses[cls] += 1
        self.buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds

    def to_json(self) -> dict[str, Any]:
        cumulative: list[list[Any]] = []
        total = 0
        for bound, count in zip((*LATENCY_BOUNDS, "+Inf"), self.buckets, strict=True):
            total += count
            cumulative.append([bound, total])
        return {
            "requests": self.requests,
            "responses": {f"{i + 1}xx": n for i, n in enumerate(self.responses)},
            "upstream_errors": self.upstream_errors,
            "inflight": self.inflight,
            "latency_buckets": cumulative,
            "latency_sum": self.latency_sum,
        }


@dataclass(frozen=True, slots=True)
class Backend:
    color: str
    host: str
    port: int
    weight: int
    stats: ColorStats = field(compare=False, repr=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.port)

    def to_json(self) -> dict[str, Any]:
        return {"color": self.color, "host": self.host, "port": self.port, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    listen: tuple[str, int]
    backends: tuple[Backend, ...]
    limits: Limits
    # Derived once at construction so that picking a backend is a bisect, not a loop.
    live: tuple[Backend, ...] = field(init=False, compare=False)
    cumulative: tuple[int, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        live = tuple(b for b in self.backends if b.weight > 0)
        acc, cum = 0, []
        for b in live:
            acc += b.weight
            cum.append(acc)
        object.__setattr__(self, "live", live)
        object.__setattr__(self, "cumulative", tuple(cum))

    def pick(self, exclude: set[tuple[str, int]] | None = None) -> Backend | None:
        """A backend with weight > 0, weighted at random, skipping the `exclude`d addresses."""
        live = self.live
        if not exclude:
            if len(live) == 1:
                return live[0]
            if not live:
                return None
            r = random.random() * self.cumulative[-1]
            return live[bisect_right(self.cumulative, r)]
        rest = [b for b in live if b.key not in exclude]
        if not rest:
            return None
        return random.choices(rest, weights=[b.weight for b in rest])[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "listen": [self.listen[0], self.listen[1]],
            "backends": [b.to_json() for b in self.backends],
            "limits": self.limits.to_json(),
        }


def parse_listen(obj: object) -> tuple[str, int]:
    if (
        not isinstance(obj, list | tuple)
        or len(obj) != 2
        or not isinstance(obj[0], str)
        or isinstance(obj[1], bool)
        or not isinstance(obj[1], int)
        or not 0 < obj[1] < 65536
    ):
        raise ConfigurationError("listen must be [host, port] with 0 < port < 65536")
    return (obj[0], obj[1])


def parse_backends(obj: object, stats_of: dict[str, ColorStats]) -> tuple[Backend, ...]:
    """Backends from JSON; each colour gets the (persistent) counters found in `stats_of`."""
    if not isinstance(obj, list):
        raise ConfigurationError("backends must be a list")
    out: list[Backend] = []
    for i, b in enumerate(obj):
        if not isinstance(b, dict):
            raise ConfigurationError(f"backends[{i}] must be an object")
        color, host, port, weight = b.get("color"), b.get("host"), b.get("port"), b.get("weight")
        if not isinstance(color, str) or not color:
            raise ConfigurationError(f"backends[{i}].color must be a non-empty string")
        if not isinstance(host, str) or not host:
            raise ConfigurationError(f"backends[{i}].host must be a non-empty string")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"backends[{i}].port must be a TCP port")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ConfigurationError(f"backends[{i}].weight must be an integer >= 0")
        stats = stats_of.get(color)
        if stats is None:
            stats = stats_of[color] = ColorStats()
        out.append(Backend(color, host, port, weight, stats))
    return tuple(out)
