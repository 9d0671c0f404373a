"""What each kind of router can do, as plain data: configuration checks a rollout against it at
load time, before anything starts, without importing any router."""

from __future__ import annotations

WEIGHTS = "weights"  # split traffic between two colors by percentage (canary steps)
STICKY = "sticky"  # keep a user on one color during a canary (cookie or header)
INFLIGHT = "inflight"  # count requests in flight per color (drain waits on it)
COUNTERS = "counters"  # count requests and responses per color (error_rate)
LATENCY = "latency"  # a latency histogram per color (latency_p99_ms)
PREVIEW = "preview"  # open a second address to one color before it takes traffic
# retry a request the live color failed unanswered on the standby color (Split.fallback); nothing
# in the configuration asks for it, so nothing is refused without it: a router that lacks it is
# given no fallback, and its users see those failures (HAProxy's `retry-on` could do it later)
FALLBACK = "fallback"
FEATURES = frozenset({WEIGHTS, STICKY, INFLIGHT, COUNTERS, LATENCY, PREVIEW, FALLBACK})

# What each router kind can do; each router's module declares its own `features` from here.
ROUTER_FEATURES: dict[str, frozenset[str]] = {
    "builtin": FEATURES,
    # HAProxy's runtime API: server weights, per-server sessions and response counters; a
    # second frontend for the preview port. Its stats have averages and maxima of response
    # times, no histogram, so no p99 (docs/haproxy.md).
    "haproxy": frozenset({WEIGHTS, INFLIGHT, COUNTERS, PREVIEW}),
    # A Service selector: all traffic to one color; the `-preview` Service reaches the new one
    # (inside the cluster). No weights: replica-ratio splits are not offered (docs/kubernetes.md).
    "kubernetes": frozenset({PREVIEW}),
    # Gateway API HTTPRoute backend weights, exact per request; no stickiness (session
    # persistence is not in the standard channel), no counters (analysis reads Prometheus).
    "gateway-api": frozenset({WEIGHTS, PREVIEW}),
}
