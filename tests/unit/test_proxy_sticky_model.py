"""Canary stickiness in the route model: validation, cookie/header parsing, bucketing (pure)."""

from __future__ import annotations

import subprocess
import sys
import zlib

import pytest

from conveyor.proxy.model import (
    COOKIE,
    HEADER,
    RANDOM,
    ColorStats,
    ConfigurationError,
    Limits,
    Route,
    Sticky,
    bucket,
    cookie_value,
    header_value,
    parse_backends,
    parse_sticky,
)


def _route(weights: dict[str, int], sticky: Sticky | None) -> Route:
    backends = parse_backends(
        [
            {"color": color, "host": "127.0.0.1", "port": 1000 + i, "weight": w}
            for i, (color, w) in enumerate(weights.items())
        ],
        {},
        sticky,
    )
    return Route("dev/web", ("127.0.0.1", 8080), backends, Limits(), sticky)


def _head(*headers: str) -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return f"GET / HTTP/1.1\r\nHost: a\r\n{lines}X-Forwarded-Proto: http\r\n\r\n".encode()


def test_parse_sticky_accepts_cookie_header_and_null() -> None:
    assert parse_sticky(None) is None
    assert parse_sticky({"cookie": "conveyor_canary"}) == Sticky(cookie="conveyor_canary")
    assert parse_sticky({"header": "X-User-Id"}) == Sticky(header="X-User-Id")
    assert Sticky(cookie="cv").to_json() == {"cookie": "cv"}
    assert Sticky(header="X-U").to_json() == {"header": "X-U"}


@pytest.mark.parametrize(
    "bad",
    [
        "cv",
        [],
        {},
        {"cookie": "cv", "header": "X-U"},
        {"name": "cv"},
        {"cookie": ""},
        {"cookie": None},
        {"cookie": 5},
        {"cookie": "a b"},
        {"cookie": "a;b"},
        {"cookie": "a=b"},
        {"cookie": "caf\u00e9"},
        {"header": "X User"},
        {"header": "X-User:"},
        {"header": "Connection"},
        {"header": "cookie"},
    ],
)
def test_parse_sticky_rejects_bad_input(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="sticky"):
        parse_sticky(bad)


def test_cookie_mode_requires_colours_that_are_cookie_values() -> None:
    backend = {"color": "bl ue", "host": "h", "port": 1, "weight": 1}
    with pytest.raises(ConfigurationError, match="cookie value"):
        parse_backends([backend], {}, Sticky(cookie="cv"))
    # Without a cookie the colour is only a label.
    assert parse_backends([backend], {}, Sticky(header="X-U"))[0].color == "bl ue"


def test_mode_is_random_unless_split() -> None:
    assert _route({"blue": 100}, Sticky(cookie="cv")).mode == RANDOM
    assert _route({"green": 0, "blue": 100}, Sticky(cookie="cv")).mode == RANDOM
    assert _route({"green": 10, "blue": 90}, None).mode == RANDOM
    assert _route({"green": 10, "blue": 90}, Sticky(cookie="cv")).mode == COOKIE
    assert _route({"green": 10, "blue": 90}, Sticky(header="X-U")).mode == HEADER


def test_cookie_value_matches_whole_pair_names_only() -> None:
    name = b"cv"
    assert cookie_value(_head("Cookie: cv=green"), name) == b"green"
    assert cookie_value(_head("Cookie: a=1; cv=blue; b=2"), name) == b"blue"
    assert cookie_value(_head("cookie: a=1;cv=blue"), name) == b"blue"
    assert cookie_value(_head('Cookie: cv="green"'), name) == b"green"
    assert cookie_value(_head("Cookie: xcv=green; cvx=blue; a=cv=green"), name) is None
    assert cookie_value(_head("Cookie: a=1", "X-Other: 2", "COOKIE: cv=green"), name) == b"green"
    assert cookie_value(_head("Cookie: cv=green; cv=blue"), name) == b"green"
    assert cookie_value(_head("X-Cookie: cv=green"), name) is None
    assert cookie_value(_head(), name) is None


def test_header_value_finds_the_named_header() -> None:
    needle = b"\r\nx-user-id:"
    assert header_value(_head("X-User-Id: 42"), needle) == b"42"
    assert header_value(_head("x-user-id:  Alice "), needle) == b"Alice"
    assert header_value(_head("X-User-Ids: 42"), needle) is None
    assert header_value(_head("Y-X-User-Id: 42"), needle) is None


def test_cookie_pick_honours_live_colours_only() -> None:
    route = _route({"green": 10, "blue": 90}, Sticky(cookie="cv"))
    for _ in range(50):
        backend, set_cookie = route.pick_by_cookie(_head("Cookie: cv=green"))
        assert (backend.color, set_cookie) == ("green", None)
    backend, set_cookie = route.pick_by_cookie(_head("Cookie: cv=purple"))
    assert set_cookie == (
        f"Set-Cookie: cv={backend.color}; Path=/; HttpOnly; SameSite=Lax\r\n".encode()
    )
    three = _route({"green": 50, "red": 0, "blue": 50}, Sticky(cookie="cv"))
    for _ in range(50):
        backend, set_cookie = three.pick_by_cookie(_head("Cookie: cv=red"))
        assert backend.color != "red" and set_cookie is not None


def test_bucket_is_crc32_mod_100_and_the_same_in_another_process() -> None:
    assert bucket(b"user-1") == zlib.crc32(b"user-1") % 100
    code = "from conveyor.proxy.model import bucket; print([bucket(b'u%d' % i) for i in range(20)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([bucket(b"u%d" % i) for i in range(20)])


def test_header_pick_walks_backends_in_order() -> None:
    def color(route: Route, value: bytes) -> str:
        return route.pick_by_header(_head(f"X-U: {value.decode()}")).color

    values = [b"user-%d" % i for i in range(2000)]
    at10 = _route({"green": 10, "blue": 90}, Sticky(header="X-U"))
    at50 = _route({"green": 50, "blue": 50}, Sticky(header="X-U"))
    # Weights not summing to 100 are normalised: 1:9 is 10%.
    small = _route({"green": 1, "blue": 9}, Sticky(header="X-U"))
    for v in values:
        expected = "green" if bucket(v) < 10 else "blue"
        assert color(at10, v) == expected
        assert color(small, v) == expected
        assert color(at50, v) == ("green" if bucket(v) < 50 else "blue")
    canary = [v for v in values if color(at10, v) == "green"]
    assert 120 < len(canary) < 280
    assert all(color(at50, v) == "green" for v in canary)


def test_limits_keepalive_timeout() -> None:
    assert Limits().keepalive_timeout == 75.0
    assert Limits.from_json({"keepalive_timeout": 0.5}).keepalive_timeout == 0.5
    with pytest.raises(ConfigurationError):
        Limits.from_json({"keepalive_timeout": 0})


def test_route_json_carries_sticky() -> None:
    stats: dict[str, ColorStats] = {}
    backends = parse_backends([{"color": "b", "host": "h", "port": 1, "weight": 1}], stats)
    assert Route("r", ("h", 1), backends, Limits()).to_json()["sticky"] is None
    route = Route("r", ("h", 1), backends, Limits(), Sticky(header="X-U"))
    assert route.to_json()["sticky"] == {"header": "X-U"}
