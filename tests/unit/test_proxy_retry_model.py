"""Which request may go to a route's fallback, and how a fallback is read (pure, no sockets)."""

from __future__ import annotations

import pytest

from conveyor.proxy.model import (
    REFUSED,
    RESET,
    ColorStats,
    ConfigurationError,
    Limits,
    Route,
    parse_backends,
    parse_fallback,
)

LOCAL = "127.0.0.1"
GREEN = (LOCAL, 2000)  # the live colour's address
BLUE = (LOCAL, 1000)  # the standby's


def _route(fallback: list[dict[str, object]] | None = None) -> Route:
    stats: dict[str, ColorStats] = {}
    backends = parse_backends(
        [{"color": "green", "host": LOCAL, "port": 2000, "weight": 100}], stats
    )
    return Route(
        "dev/web", (LOCAL, 8080), backends, Limits(), None, parse_fallback(fallback, stats)
    )


STANDBY = [{"color": "blue", "host": LOCAL, "port": 1000, "weight": 100}]


@pytest.mark.parametrize(
    "method", [b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"POST", b"PATCH"]
)
@pytest.mark.parametrize("whole", [True, False])
def test_a_refused_connect_goes_to_the_fallback_whatever_the_request(
    method: bytes, whole: bool
) -> None:
    target = _route(STANDBY).retry_target(REFUSED, method, whole, {GREEN})
    assert target is not None and target.color == "blue"


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])
def test_a_reset_goes_to_the_fallback_for_a_whole_idempotent_request(method: bytes) -> None:
    route = _route(STANDBY)
    target = route.retry_target(RESET, method, True, {GREEN})
    assert target is not None and target.key == BLUE
    # Still being received (or too big to hold): the proxy could not send it whole again.
    assert route.retry_target(RESET, method, False, {GREEN}) is None


@pytest.mark.parametrize("method", [b"POST", b"PATCH", b"CONNECT", b"PROPFIND", b"get"])
def test_a_reset_is_never_retried_for_a_method_that_is_not_idempotent(method: bytes) -> None:
    assert _route(STANDBY).retry_target(RESET, method, True, {GREEN}) is None


def test_no_fallback_no_retry() -> None:
    for reason in (REFUSED, RESET):
        assert _route().retry_target(reason, b"GET", True, {GREEN}) is None
        assert _route(None).spare == ()


def test_a_fallback_that_failed_itself_or_has_no_weight_is_not_a_target() -> None:
    route = _route(STANDBY)
    assert route.retry_target(REFUSED, b"GET", True, {GREEN, BLUE}) is None
    idle = _route([{**STANDBY[0], "weight": 0}])
    assert idle.spare == () and idle.retry_target(REFUSED, b"GET", True, {GREEN}) is None


def test_several_fallbacks_are_picked_by_weight_skipping_failed_ones() -> None:
    two = [
        {"color": "blue", "host": LOCAL, "port": 1000, "weight": 90},
        {"color": "blue", "host": LOCAL, "port": 1001, "weight": 10},
    ]
    route = _route(two)
    picked = [route.retry_target(REFUSED, b"GET", True, {GREEN}) for _ in range(2000)]
    ports = [b.port for b in picked if b is not None]
    assert len(ports) == 2000 and 1650 < ports.count(1000) < 1950
    only = route.retry_target(REFUSED, b"GET", True, {BLUE})
    assert only is not None and only.port == 1001


def test_the_fallback_takes_no_traffic_and_is_shown_by_ping() -> None:
    route = _route(STANDBY)
    assert {route.pick().color for _ in range(100)} == {"green"}  # type: ignore[union-attr]
    assert route.to_json()["fallback"] == STANDBY
    assert _route().to_json()["fallback"] == []


def test_the_fallback_colour_shares_its_counters() -> None:
    stats: dict[str, ColorStats] = {}
    backends = parse_backends(STANDBY, stats)
    fallback = parse_fallback(STANDBY, stats)
    assert fallback[0].stats is backends[0].stats is stats["blue"]


@pytest.mark.parametrize(
    ("fallback", "message"),
    [
        ({"color": "blue"}, "fallback must be a list"),
        (["blue"], "fallback[0] must be an object"),
        ([{**STANDBY[0], "port": 0}], "fallback[0].port must be a TCP port"),
        ([{**STANDBY[0], "weight": -1}], "fallback[0].weight must be an integer >= 0"),
    ],
)
def test_a_bad_fallback_is_refused_naming_it(fallback: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_fallback(fallback, {})


def test_retries_are_counted_by_reason() -> None:
    s = ColorStats()
    s.retries[REFUSED] += 2
    s.retries[RESET] += 1
    assert s.to_json()["retries"] == {"refused": 2, "reset": 1}


def test_after_a_switch_back_the_route_as_it_is_now_takes_the_retry() -> None:
    # The standby became the live color (no fallback any more) before the proxy learnt that the
    # request's backend died: the retry goes to the route's live backend.
    stats: dict[str, ColorStats] = {}
    switched = Route("dev/web", (LOCAL, 8080), parse_backends(STANDBY, stats), Limits())
    for reason in (REFUSED, RESET):
        target = switched.retry_target(reason, b"GET", True, {GREEN})
        assert target is not None and target.key == BLUE
    assert switched.retry_target(RESET, b"POST", True, {GREEN}) is None
    # But a backend still in the route (a canary's split) does not send its failures to the
    # other one: only a fallback takes them.
    split = Route(
        "dev/web",
        (LOCAL, 8080),
        parse_backends([*STANDBY, {**STANDBY[0], "color": "green", "port": 2000}], stats),
        Limits(),
    )
    assert split.retry_target(RESET, b"GET", True, {GREEN}) is None
