"""Route table entries, limits and per-colour counters of the proxy.

Everything a request reads at dispatch time is immutable (`Route`, `Backend`, `Limits`), so a
route swap is a single dict assignment and a request never sees half of an update. Counters are
the exception: they are plain mutable ints in one small object per (route name, colour), shared by
every `Backend` of that colour across swaps so that counts survive them.

A route may carry a `fallback`: the standby colour, which takes no traffic but may take a request
once when the colour it went to failed before answering a single byte (`retry_target`).
"""

from __future__ import annotations

import random
import re
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Container
from dataclasses import dataclass, field, fields
from typing import Any, Final

# Upper bounds (seconds) of the latency histogram; the last bucket is +Inf.
LATENCY_BOUNDS: Final[tuple[float, ...]] = (
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
_FIRST_BOUND: Final = LATENCY_BOUNDS[0]


# RFC 7230 token (a header name); RFC 6265 cookie names are RFC 2616 tokens: the same set.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 6265 cookie-octet: a colour must be one to travel unquoted as a cookie value.
_COOKIE_VALUE: Final = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")
# Headers the proxy drops or rewrites before forwarding: stickiness could never see them.
_UNUSABLE_HEADERS: Final = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "content-length",
        "cookie",
    )
)
# Methods whose request may be sent twice: the standards say so (RFC 9110, 9.2.2), and the
# proxy relies on it when it replays a request the backend may have received.
IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"))
# Why a request went to the fallback (index into ColorStats.retries).
REFUSED: Final = 0  # the connect failed: nothing reached the backend
RESET: Final = 1  # the connection was reset or closed before a single response byte
RETRY_REASONS: Final = ("refused", "reset")
# Route.mode: how a request to a split route chooses its colour.
RANDOM: Final = (
    0  # weighted random (also: every route that is not split, whatever its sticky setting)
)
COOKIE: Final = 1
HEADER: Final = 2


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
    # Seconds a client keep-alive connection may stay idle (no request in flight) before the
    # proxy closes it; checked by the periodic sweep.
    keepalive_timeout: float = 75.0
    # Seconds a client may take to send a whole request head once it has started one (slowloris
    # protection), and to send anything at all on a new connection; checked by the sweep.
    header_timeout: float = 10.0

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
            # A string under `from __future__ import annotations`, the type itself when compiled.
            if f.type in ("int", int):
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

    __slots__ = (
        "buckets",
        "inflight",
        "latency_sum",
        "requests",
        "responses",
        "retries",
        "upstream_errors",
    )

    def __init__(self) -> None:
        self.requests = 0
        # responses[0] counts 1xx ... responses[4] counts 5xx.
        self.responses = [0, 0, 0, 0, 0]
        self.upstream_errors = 0
        self.inflight = 0
        # Non-cumulative internally (one increment per observation); made cumulative on output.
        self.buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        # Requests this colour failed and the fallback took, by reason (REFUSED, RESET).
        self.retries = [0, 0]

    def observe(self, status: int, seconds: float) -> None:
        cls = status // 100 - 1
        if 0 <= cls < 5:
            self.responses[cls] += 1
        # Most proxied requests fall in the first bucket: skip the bisect for them.
        self.buckets[0 if seconds <= _FIRST_BOUND else bisect_left(LATENCY_BOUNDS, seconds)] += 1
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
            "retries": dict(zip(RETRY_REASONS, self.retries, strict=True)),
        }


@dataclass(frozen=True, slots=True)
class Backend:
    color: str
    host: str
    port: int
    weight: int
    stats: ColorStats = field(compare=False, repr=False)
    # (host, port): the upstream pool's key, built once rather than per request.
    key: tuple[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.host, self.port))

    def to_json(self) -> dict[str, Any]:
        return {"color": self.color, "host": self.host, "port": self.port, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Sticky:
    """Keeps a client on one colour while a route is split: by cookie or by a header's hash."""

    cookie: str | None = None
    header: str | None = None

    def to_json(self) -> dict[str, str]:
        return {"cookie": self.cookie} if self.cookie is not None else {"header": self.header or ""}


def parse_sticky(obj: object) -> Sticky | None:
    if obj is None:
        return None
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ConfigurationError('sticky must be {"cookie": name}, {"header": name} or null')
    ((kind, name),) = obj.items()
    if kind not in ("cookie", "header"):
        raise ConfigurationError(f"sticky: unknown key {kind!r} (use cookie or header)")
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ConfigurationError(
            f"sticky.{kind} must be a token (letters, digits and !#$%&'*+-.^_`|~), got {name!r}"
        )
    if kind == "cookie":
        return Sticky(cookie=name)
    if name.lower() in _UNUSABLE_HEADERS:
        raise ConfigurationError(f"sticky.header cannot be {name!r}: the proxy does not forward it")
    return Sticky(header=name)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    listen: tuple[str, int]
    backends: tuple[Backend, ...]
    limits: Limits
    sticky: Sticky | None = None
    # The standby colour(s): no traffic, but the one retry of a request that failed unanswered.
    fallback: tuple[Backend, ...] = ()
    # Derived once at construction so that picking a backend is a bisect, not a loop, and a route
    # that is not split pays one integer test for stickiness.
    live: tuple[Backend, ...] = field(init=False, compare=False)
    cumulative: tuple[int, ...] = field(init=False, compare=False)
    mode: int = field(init=False, compare=False)
    # Cookie mode: live colour (bytes) -> backend, colour -> its Set-Cookie header line.
    by_color: dict[bytes, Backend] = field(init=False, compare=False)
    set_cookie: dict[str, bytes] = field(init=False, compare=False)
    # Header mode: b"\r\n<lowercased name>:" as it appears in the forwarded head, and the
    # cumulative weights times 100 (bucket * total < cum * 100 <=> bucket < 100 * cum / total).
    needle: bytes = field(init=False, compare=False)
    hundredfold: tuple[int, ...] = field(init=False, compare=False)
    # The fallback backends with weight > 0; empty means no request is ever retried elsewhere.
    spare: tuple[Backend, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        live = tuple(b for b in self.backends if b.weight > 0)
        acc, cum = 0, []
        for b in live:
            acc += b.weight
            cum.append(acc)
        sticky = self.sticky
        mode = RANDOM
        by_color: dict[bytes, Backend] = {}
        set_cookie: dict[str, bytes] = {}
        needle = b""
        if sticky is not None and len(live) > 1:
            if sticky.cookie is not None:
                mode = COOKIE
                name = sticky.cookie.encode()
                for b in reversed(live):  # reversed: the first backend of a colour wins
                    color = b.color.encode()
                    by_color[color] = b
                    set_cookie[b.color] = (
                        b"Set-Cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax\r\n" % (name, color)
                    )
            else:
                mode = HEADER
                needle = b"\r\n" + (sticky.header or "").lower().encode() + b":"
        object.__setattr__(self, "live", live)
        object.__setattr__(self, "cumulative", tuple(cum))
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "by_color", by_color)
        object.__setattr__(self, "set_cookie", set_cookie)
        object.__setattr__(self, "needle", needle)
        object.__setattr__(self, "hundredfold", tuple(c * 100 for c in cum))
        object.__setattr__(self, "spare", tuple(b for b in self.fallback if b.weight > 0))

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

    def retry_target(
        self, reason: int, method: bytes, whole: bool, failed: Container[tuple[str, int]]
    ) -> Backend | None:
        """Where a request that got no byte of a response goes for its one retry, if anywhere.

        REFUSED: any request (nothing reached the app, and the proxy still holds all of it).
        RESET: only an idempotent method whose request the proxy holds `whole` (received to its
        end and buffered): the app may have acted on it, so only a request that may be sent
        twice is. The fallback is picked by weight among those not at a `failed` address; when
        there is none and the failed backend has left the route (the switch back to the standby
        came before the news of the death), a live backend of the route as it is now.
        """
        if reason == RESET and (not whole or method not in IDEMPOTENT):
            return None
        spare = [b for b in self.spare if b.key not in failed]
        if not spare and all(b.key not in failed for b in self.live):
            spare = list(self.live)
        if len(spare) < 2:
            return spare[0] if spare else None
        return random.choices(spare, weights=[b.weight for b in spare])[0]

    def pick_by_cookie(self, head: bytes) -> tuple[Backend, bytes | None]:
        """Cookie mode: the colour the request's cookie names if live, else a weighted pick.

        Returns the backend and the Set-Cookie line to add to the response (None when the
        request's cookie already names a live colour). `head` is the forwarded request head.
        """
        assert self.sticky is not None and self.sticky.cookie is not None
        color = cookie_value(head, self.sticky.cookie.encode())
        if color is not None:
            backend = self.by_color.get(color)
            if backend is not None:
                return backend, None
        backend = self.pick()
        assert backend is not None  # split: there are live backends
        return backend, self.set_cookie[backend.color]

    def pick_by_header(self, head: bytes) -> Backend:
        """Header mode: bucket = crc32(value) % 100, walking the backends in the order given."""
        value = header_value(head, self.needle)
        if not value:
            backend = self.pick()
            assert backend is not None
            return backend
        return self.live[bisect_right(self.hundredfold, bucket(value) * self.cumulative[-1])]

    def to_json(self) -> dict[str, Any]:
        return {
            "listen": [self.listen[0], self.listen[1]],
            "backends": [b.to_json() for b in self.backends],
            "limits": self.limits.to_json(),
            "sticky": self.sticky.to_json() if self.sticky is not None else None,
            "fallback": [b.to_json() for b in self.fallback],
        }


def bucket(value: bytes) -> int:
    """0..99, the same in every process (crc32, unlike Python's salted hash())."""
    return zlib.crc32(value) % 100


def header_value(head: bytes, needle: bytes) -> bytes | None:
    """The value of the first header whose b"\r\n<name>:" is `needle`, in a forwarded head.

    The proxy writes every forwarded header as b"Name: value\r\n" (values never hold CR or
    LF: the parser refuses them), so a line starts after b"\r\n" and ends at the next one.
    """
    start = head.lower().find(needle)
    if start < 0:
        return None
    start += len(needle)
    end = head.find(b"\r\n", start)
    return head[start:end].strip(b" \t")


def cookie_value(head: bytes, name: bytes) -> bytes | None:
    """The value of the cookie `name` in the head's Cookie header(s), or None.

    Matched as a cookie-pair name ("a=1; name=v"), never as the tail of another cookie's name
    ("xname=v"). The first pair with that name wins (user agents send the most specific first).
    """
    low = head.lower()
    pos = low.find(b"\r\ncookie:")
    while pos >= 0:
        start = pos + 9
        end = head.find(b"\r\n", start)
        for pair in head[start:end].split(b";"):
            key, eq, value = pair.partition(b"=")
            if eq and key.strip(b" \t") == name:
                value = value.strip(b" \t")
                if len(value) > 1 and value[0] == 34 and value[-1] == 34:  # a quoted value
                    value = value[1:-1]
                return value
        pos = low.find(b"\r\ncookie:", end)
    return None


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


def parse_backends(
    obj: object,
    stats_of: dict[str, ColorStats],
    sticky: Sticky | None = None,
    key: str = "backends",
) -> tuple[Backend, ...]:
    """Backends from JSON; each colour gets the (persistent) counters found in `stats_of`.

    With a sticky cookie, a colour is also a cookie value, so it must be cookie-octets. `key`
    names the list in error messages.
    """
    if not isinstance(obj, list):
        raise ConfigurationError(f"{key} must be a list")
    out: list[Backend] = []
    for i, b in enumerate(obj):
        if not isinstance(b, dict):
            raise ConfigurationError(f"{key}[{i}] must be an object")
        color, host, port, weight = b.get("color"), b.get("host"), b.get("port"), b.get("weight")
        if not isinstance(color, str) or not color:
            raise ConfigurationError(f"{key}[{i}].color must be a non-empty string")
        if not isinstance(host, str) or not host:
            raise ConfigurationError(f"{key}[{i}].host must be a non-empty string")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"{key}[{i}].port must be a TCP port")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ConfigurationError(f"{key}[{i}].weight must be an integer >= 0")
        if sticky is not None and sticky.cookie is not None and not _COOKIE_VALUE.fullmatch(color):
            raise ConfigurationError(
                f"{key}[{i}].color {color!r} cannot be a cookie value (sticky.cookie is set)"
            )
        stats = stats_of.get(color)
        if stats is None:
            stats = stats_of[color] = ColorStats()
        out.append(Backend(color, host, port, weight, stats))
    return tuple(out)


def parse_fallback(obj: object, stats_of: dict[str, ColorStats]) -> tuple[Backend, ...]:
    """The route's fallback backends (null or missing: none), counted like any colour."""
    return () if obj is None else parse_backends(obj, stats_of, key="fallback")
