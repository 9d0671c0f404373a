"""What each kind of router can do, as plain data: configuration checks a rollout against it at
load time, before anything starts, without importing any router."""

from __future__ import annotations

WEIGHTS = "weights"  # split traffic between two colors by percentage (canary steps)
STICKY = "sticky"  # keep a user on one color during a canary (cookie or header)
INFLIGHT = "inflight"  # count requests in flight per color (drain waits on it)
COUNTERS = "counters"  # count requests, responses and latency per color (built-in analysis)
PREVIEW = "preview"  # open a second address to one color before it takes traffic
FEATURES = frozenset({WEIGHTS, STICKY, INFLIGHT, COUNTERS, PREVIEW})

ROUTER_FEATURES: dict[str, frozenset[str]] = {
    "builtin": FEATURES,
}
