"""Adding up the `stats` answers of several workers (the shape of `ColorStats.to_json`)."""

from __future__ import annotations

import copy
from collections.abc import Container
from typing import Any


def add_routes(
    acc: dict[str, Any], routes: dict[str, Any], known: Container[str], sign: int = 1
) -> None:
    """acc += sign * routes, for the routes in `known` only (a removed route's are forgotten)."""
    for name, route in routes.items():
        if name not in known:
            continue
        colors = acc.setdefault(name, {"colors": {}})["colors"]
        for color, counts in route.get("colors", {}).items():
            mine = colors.get(color)
            if mine is None:
                mine = colors[color] = _zero(counts)
            _add(mine, counts, sign)


def zero_inflight(routes: dict[str, Any]) -> dict[str, Any]:
    """Counters of a worker that ended: nothing of it is in flight any more."""
    out = copy.deepcopy(routes)
    for route in out.values():
        for counts in route.get("colors", {}).values():
            counts["inflight"] = 0
    return out


def _zero(like: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": 0,
        "responses": dict.fromkeys(like["responses"], 0),
        "upstream_errors": 0,
        "inflight": 0,
        "latency_buckets": [[bound, 0] for bound, _ in like["latency_buckets"]],
        "latency_sum": 0.0,
        "retries": dict.fromkeys(like["retries"], 0),
    }


def _add(acc: dict[str, Any], counts: dict[str, Any], sign: int) -> None:
    for key in ("requests", "upstream_errors", "inflight", "latency_sum"):
        acc[key] += sign * counts[key]
    for group in ("responses", "retries"):
        mine = acc[group]
        for key, n in counts[group].items():
            mine[key] = mine.get(key, 0) + sign * n
    for pair, (_, n) in zip(acc["latency_buckets"], counts["latency_buckets"], strict=True):
        pair[1] += sign * n
