"""ProxyWindow and bucket_quantile on synthetic proxy snapshots (no sockets)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.metrics.builtin import ProxyWindow, bucket_quantile
from conveyor.proxy.model import LATENCY_BOUNDS, ColorStats


def stats(
    ok: int = 0,
    err5xx: int = 0,
    upstream: int = 0,
    err4xx: int = 0,
    latencies: dict[float, int] | None = None,
) -> dict[str, Any]:
    """A stats entry for one color in the proxy's own format (built by the proxy's ColorStats)."""
    c = ColorStats()
    c.requests = ok + err5xx + err4xx
    c.responses = [0, ok, 0, err4xx, err5xx]
    c.upstream_errors = upstream
    for seconds, n in (latencies or {}).items():
        for _ in range(n):
            c.buckets[_bucket(seconds)] += 1
    return c.to_json()


def _bucket(seconds: float) -> int:
    return next((i for i, b in enumerate(LATENCY_BOUNDS) if seconds <= b), len(LATENCY_BOUNDS))


def test_error_rate_over_the_window() -> None:
    w = ProxyWindow(keep=10)
    w.observe(stats(ok=100), 0)
    w.observe(stats(ok=190, err5xx=10), 5)
    assert w.error_rate(10, 5) == (10 / 100, 100)


def test_a_single_snapshot_has_no_rate() -> None:
    w = ProxyWindow(keep=10)
    w.observe(stats(ok=100, err5xx=50), 0)
    assert w.error_rate(10, 0) == (None, 0)
    assert w.latency_p99_ms(10, 0) == (None, 0)


def test_no_traffic_in_the_window_has_no_rate() -> None:
    w = ProxyWindow(keep=10)
    w.observe(stats(ok=100), 0)
    w.observe(stats(ok=100), 5)
    assert w.error_rate(10, 5) == (None, 0)


def test_baseline_is_the_newest_snapshot_at_or_before_the_window_start() -> None:
    w = ProxyWindow(keep=15)
    # 10 errors early on, then only successes: a 10s window ending at t=20 must not see them.
    w.observe(stats(ok=0), 0)
    w.observe(stats(ok=90, err5xx=10), 5)
    w.observe(stats(ok=190, err5xx=10), 10)
    w.observe(stats(ok=290, err5xx=10), 15)
    w.observe(stats(ok=390, err5xx=10), 20)
    assert w.error_rate(10, 20) == (0.0, 200)
    assert w.error_rate(15, 20) == (0.0, 300)
    # And older snapshots than the longest window were dropped, except that window's baseline.
    assert [s.at for s in w.snapshots] == [5, 10, 15, 20]
    # A window longer than what is kept starts at the oldest snapshot left.
    assert w.error_rate(60, 20) == (0.0, 300)


def test_window_not_full_yet_uses_the_oldest_snapshot() -> None:
    w = ProxyWindow(keep=10)
    w.observe(stats(ok=0), 0)
    w.observe(stats(ok=27, err5xx=3), 3)
    assert w.error_rate(10, 3) == (0.1, 30)


def test_proxy_generated_502s_count_once() -> None:
    # The proxy counts its own 502/504 answers both as 5xx and as upstream_errors.
    w = ProxyWindow(keep=10)
    w.observe(stats(ok=0), 0)
    w.observe(stats(ok=90, err5xx=10, upstream=10), 1)
    assert w.error_rate(10, 1) == (0.1, 100)


def test_responses_cut_off_mid_body_count_as_failed_requests() -> None:
    # upstream_errors without a 5xx answer: the proxy had to cut the response off.
    w = ProxyWindow(keep=10)
    w.observe(stats(ok=0), 0)
    w.observe(stats(ok=80, upstream=20), 1)
    assert w.error_rate(10, 1) == (0.2, 100)


def test_4xx_are_not_errors() -> None:
    w = ProxyWindow(keep=10)
    w.observe(stats(), 0)
    w.observe(stats(ok=50, err4xx=50), 1)
    assert w.error_rate(10, 1) == (0.0, 100)


def test_counter_reset_restarts_the_window() -> None:
    w = ProxyWindow(keep=10)
    w.observe(stats(ok=1000, err5xx=500), 0)
    w.observe(stats(ok=2000, err5xx=500), 1)
    # The proxy restarted: counts start from zero again.
    w.observe(stats(ok=5), 2)
    assert w.error_rate(10, 2) == (None, 0)
    w.observe(stats(ok=105, err5xx=0), 3)
    assert w.error_rate(10, 3) == (0.0, 100)
    assert [s.at for s in w.snapshots] == [2, 3]


def test_same_time_replaces_and_older_is_ignored() -> None:
    w = ProxyWindow(keep=10)
    w.observe(stats(ok=0), 0)
    w.observe(stats(ok=10), 1)
    w.observe(stats(ok=20), 1)
    w.observe(stats(ok=5), 0.5)
    assert [s.at for s in w.snapshots] == [0, 1]
    assert w.error_rate(10, 1) == (0.0, 20)


def test_latency_p99_from_bucket_deltas() -> None:
    w = ProxyWindow(keep=10)
    # Old slow requests before the window must not count.
    w.observe(stats(ok=100, latencies={3.0: 100}), 0)
    w.observe(stats(ok=200, latencies={3.0: 100, 0.02: 100}), 10)
    value, samples = w.latency_p99_ms(10, 10)
    assert samples == 100
    # All 100 in the (0.01, 0.025] bucket: rank 99 of 100 -> 0.01 + 0.015 * 0.99.
    assert value == pytest.approx((0.01 + 0.015 * 0.99) * 1000)


def test_bucket_quantile_like_prometheus() -> None:
    buckets = [(0.1, 50), (0.5, 90), (1.0, 100), (math.inf, 100)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.7, buckets) == pytest.approx(0.1 + 0.4 * (70 - 50) / 40)
    assert bucket_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * 9 / 10)
    # In the +Inf bucket: the largest finite bound, as histogram_quantile answers.
    assert bucket_quantile(0.99, [(0.1, 1), (0.5, 2), (math.inf, 100)]) == 0.5
    # First bucket: interpolated from 0.
    assert bucket_quantile(0.5, [(0.2, 10), (math.inf, 10)]) == pytest.approx(0.1)


@given(st.lists(st.floats(0.0001, 20.0), min_size=1, max_size=300))
def test_p99_lies_in_the_bucket_of_the_true_p99(latencies: list[float]) -> None:
    counts: dict[float, int] = {}
    for x in latencies:
        counts[x] = counts.get(x, 0) + 1
    w = ProxyWindow(keep=10)
    w.observe(stats(), 0)
    w.observe(stats(ok=len(latencies), latencies=counts), 1)
    value, samples = w.latency_p99_ms(10, 1)
    assert samples == len(latencies) and value is not None
    ordered = sorted(latencies)
    true_p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    bounds = (0.0, *LATENCY_BOUNDS)
    i = _bucket(true_p99)
    if i == len(LATENCY_BOUNDS):
        assert value == LATENCY_BOUNDS[-1] * 1000
    else:
        assert bounds[i] * 1000 <= value <= LATENCY_BOUNDS[i] * 1000 + 1e-9


@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=2, max_size=30),
    st.floats(1, 30),
)
def test_error_rate_is_a_ratio_of_the_window(steps: list[tuple[int, int]], window: float) -> None:
    w = ProxyWindow(keep=window)
    ok = bad = 0
    history = []
    for t, (d_ok, d_bad) in enumerate(steps):
        ok, bad = ok + d_ok, bad + d_bad
        history.append((t, ok, bad))
        w.observe(stats(ok=ok, err5xx=bad), t)
    now = len(steps) - 1
    value, samples = w.error_rate(window, now)
    base = [h for h in history if h[0] <= now - window]
    _, ok0, bad0 = base[-1] if base else history[0]
    total = (ok - ok0) + (bad - bad0)
    assert samples == total
    if total == 0:
        assert value is None
    else:
        assert value == pytest.approx((bad - bad0) / total)
