"""Adding up the workers' counters (conveyor.proxy.counters): the keeper's `stats`."""

from __future__ import annotations

from typing import Any

from conveyor.proxy.counters import add_routes, zero_inflight
from conveyor.proxy.model import ColorStats


def _worker(requests: int, status: int, seconds: float, inflight: int = 0) -> dict[str, Any]:
    stats = ColorStats()
    for _ in range(requests):
        stats.requests += 1
        stats.observe(status, seconds)
    stats.inflight = inflight
    stats.retries[0] = 1
    return {"dev/web": {"colors": {"blue": stats.to_json()}}}


def test_the_sum_of_two_workers_is_one_proxy_that_saw_both() -> None:
    both = ColorStats()
    for _ in range(3):
        both.requests += 1
        both.observe(200, 0.0005)
    for _ in range(2):
        both.requests += 1
        both.observe(502, 0.3)
    both.inflight = 4
    both.retries[0] = 2
    total: dict[str, Any] = {}
    add_routes(total, _worker(3, 200, 0.0005, inflight=1), {"dev/web"})
    add_routes(total, _worker(2, 502, 0.3, inflight=3), {"dev/web"})
    assert total == {"dev/web": {"colors": {"blue": both.to_json()}}}


def test_a_removed_route_is_not_counted_and_a_retired_worker_has_nothing_in_flight() -> None:
    total: dict[str, Any] = {}
    add_routes(total, _worker(1, 200, 0.001), set())
    assert total == {}
    counts = _worker(2, 200, 0.001, inflight=2)
    retired = zero_inflight(counts)
    assert retired["dev/web"]["colors"]["blue"]["inflight"] == 0
    assert counts["dev/web"]["colors"]["blue"]["inflight"] == 2  # the input is left as it was


def test_subtracting_a_snapshot_leaves_what_came_after_it() -> None:
    snapshot = _worker(2, 200, 0.001)
    final: dict[str, Any] = {}
    add_routes(final, _worker(5, 200, 0.001), {"dev/web"})
    add_routes(final, snapshot, {"dev/web"}, sign=-1)
    blue = final["dev/web"]["colors"]["blue"]
    assert blue["requests"] == 3 and blue["responses"]["2xx"] == 3
    assert blue["latency_buckets"][0][1] == 3 and blue["retries"]["refused"] == 0
