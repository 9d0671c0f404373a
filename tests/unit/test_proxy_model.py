"""Route table entries, limits and counters of the proxy (pure, no sockets)."""

from __future__ import annotations

import pytest

from conveyor.proxy.model import (
    ColorStats,
    ConfigurationError,
    Limits,
    Route,
    parse_backends,
    parse_listen,
)


def _route(weights: list[int]) -> Route:
    stats: dict[str, ColorStats] = {}
    backends = parse_backends(
        [
            {"color": f"c{i}", "host": "127.0.0.1", "port": 1000 + i, "weight": w}
            for i, w in enumerate(weights)
        ],
        stats,
    )
    return Route("dev/web", ("127.0.0.1", 8080), backends, Limits())


def test_single_backend_is_always_picked() -> None:
    route = _route([100])
    assert {route.pick().port for _ in range(50)} == {1000}  # type: ignore[union-attr]


def test_zero_weight_never_picked_and_weights_respected() -> None:
    route = _route([0, 75, 25])
    counts = {1000: 0, 1001: 0, 1002: 0}
    for _ in range(4000):
        counts[route.pick().port] += 1  # type: ignore[union-attr]
    assert counts[1000] == 0
    assert 2600 < counts[1001] < 3400


def test_pick_excluding_and_no_live_backend() -> None:
    route = _route([50, 50])
    assert route.pick({("127.0.0.1", 1000)}).port == 1001  # type: ignore[union-attr]
    assert route.pick({("127.0.0.1", 1000), ("127.0.0.1", 1001)}) is None
    assert _route([0]).pick() is None


def test_counters_are_shared_per_colour_across_routes() -> None:
    stats: dict[str, ColorStats] = {}
    first = parse_backends([{"color": "blue", "host": "h", "port": 1, "weight": 1}], stats)
    second = parse_backends([{"color": "blue", "host": "h", "port": 2, "weight": 1}], stats)
    assert first[0].stats is second[0].stats is stats["blue"]


def test_histogram_is_cumulative_on_output() -> None:
    s = ColorStats()
    for status, seconds in ((200, 0.0005), (201, 0.003), (503, 0.003), (404, 20.0), (101, 1.0)):
        s.observe(status, seconds)
    out = s.to_json()
    assert out["responses"] == {"1xx": 1, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1}
    buckets = dict((str(b), n) for b, n in out["latency_buckets"])
    assert buckets["0.001"] == 1
    assert buckets["0.0025"] == 1
    assert buckets["0.005"] == 3
    assert buckets["1.0"] == 4
    assert buckets["10.0"] == 4
    assert buckets["+Inf"] == 5
    assert out["latency_sum"] == pytest.approx(21.0065)


def test_limits_defaults_overrides_and_errors() -> None:
    assert Limits.from_json(None) == Limits()
    lim = Limits.from_json({"max_headers": 10, "upstream_timeout": 1.5, "other": "ignored"})
    assert lim.max_headers == 10 and lim.upstream_timeout == 1.5
    assert lim.max_request_line == 8192
    assert Limits.from_json({"retries": 0}).retries == 0
    for bad in (
        {"max_headers": "10"},
        {"max_headers": 1.5},
        {"connect_timeout": 0},
        {"retries": -1},
        [],
    ):
        with pytest.raises(ConfigurationError):
            Limits.from_json(bad)


@pytest.mark.parametrize(
    "bad",
    [
        [{"color": "", "host": "h", "port": 1, "weight": 1}],
        [{"color": "b", "host": "h", "port": 0, "weight": 1}],
        [{"color": "b", "host": "h", "port": 1, "weight": -1}],
        [{"color": "b", "host": "h", "port": True, "weight": 1}],
        [{"color": "b", "port": 1, "weight": 1}],
        ["x"],
        {},
    ],
)
def test_bad_backends_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        parse_backends(bad, {})


def test_listen_validation() -> None:
    assert parse_listen(["127.0.0.1", 80]) == ("127.0.0.1", 80)
    for bad in (["127.0.0.1"], ["127.0.0.1", 0], ["127.0.0.1", "80"], [1, 80], None):
        with pytest.raises(ConfigurationError):
            parse_listen(bad)


def test_limits_header_timeout() -> None:
    assert Limits().header_timeout == 10.0
    assert Limits.from_json({"header_timeout": 0.25}).header_timeout == 0.25
    assert Limits.from_json({"header_timeout": 3}).to_json()["header_timeout"] == 3
    for bad in (0, -1, "10s", True):
        with pytest.raises(ConfigurationError):
            Limits.from_json({"header_timeout": bad})
