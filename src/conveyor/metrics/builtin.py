"""error_rate and latency_p99_ms from the built-in proxy's per-color counters.

The proxy only keeps cumulative counters since it started. A `ProxyWindow` remembers timestamped
snapshots of one route+color and answers questions about the difference between now and
`window` seconds ago, which is what a sliding window over counters is. It is pure (fed with
`observe`), so the arithmetic is tested without sockets; `BuiltinSource` does the polling.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.core.analysis import Measurement, judge
from conveyor.metrics.base import Target, seconds, short
from conveyor.routers.base import ColorCounters, ProxyUnavailable, Router, RouterError

if TYPE_CHECKING:
    from conveyor.config.models import AnalysisCheck

P99 = 0.99


@dataclass(frozen=True)
class Snapshot:
    """The counters of one color at one moment (cumulative since the proxy started)."""

    at: float
    requests: int
    responses: int  # every answered request, 1xx..5xx
    server_errors: int  # 5xx, including the 502/504 the proxy answers itself
    upstream_errors: int  # 502/504 the proxy answered, plus responses cut off mid-body
    buckets: tuple[tuple[float, int], ...]  # (upper bound in seconds, cumulative count)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], at: float) -> Snapshot:
        responses = stats["responses"]
        buckets = tuple(
            (math.inf if bound == "+Inf" else float(bound), int(count))
            for bound, count in stats["latency_buckets"]
        )
        return cls(
            at=at,
            requests=int(stats["requests"]),
            responses=sum(int(n) for n in responses.values()),
            server_errors=int(responses.get("5xx", 0)),
            upstream_errors=int(stats["upstream_errors"]),
            buckets=buckets,
        )

    def follows(self, earlier: Snapshot) -> bool:
        """False when a counter went down: the proxy restarted and counts began again."""
        if [b for b, _ in self.buckets] != [b for b, _ in earlier.buckets]:
            return False
        pairs = [
            (self.requests, earlier.requests),
            (self.responses, earlier.responses),
            (self.server_errors, earlier.server_errors),
            (self.upstream_errors, earlier.upstream_errors),
            *((n, m) for (_, n), (_, m) in zip(self.buckets, earlier.buckets, strict=True)),
        ]
        return all(now >= before for now, before in pairs)


class ProxyWindow:
    """Snapshots of one route+color, and the rates over a trailing window.

    `keep` is the longest window that will be asked for: older snapshots are dropped, except the
    newest one at or before `now - keep`, which is the baseline of that window.
    """

    def __init__(self, keep: float) -> None:
        self.keep = keep
        self.snapshots: list[Snapshot] = []

    def observe(self, stats: Mapping[str, Any], now: float) -> None:
        snap = Snapshot.from_stats(stats, now)
        if self.snapshots:
            last = self.snapshots[-1]
            if now < last.at:
                return  # out of order: the newer snapshot already says more
            if not snap.follows(last):
                # Counters went back (proxy restart): differences across the reset are
                # meaningless, so the window starts over from here.
                self.snapshots.clear()
            elif now == last.at:
                self.snapshots.pop()
        self.snapshots.append(snap)
        self._prune(now)

    def _prune(self, now: float) -> None:
        cut = now - self.keep
        keep_from = 0
        for i, snap in enumerate(self.snapshots):
            if snap.at <= cut:
                keep_from = i
        del self.snapshots[:keep_from]

    def span(self, window_s: float, now: float) -> tuple[Snapshot, Snapshot] | None:
        """(baseline, latest) for the window ending at `now`; None before two snapshots.

        The baseline is the newest snapshot at or before `now - window_s`, or the oldest one
        while the window is not full yet (so early on it covers less time, and fewer requests).
        """
        upto = [s for s in self.snapshots if s.at <= now]
        if len(upto) < 2:
            return None
        start = now - window_s
        older = [s for s in upto if s.at <= start]
        base = older[-1] if older else upto[0]
        latest = upto[-1]
        if base is latest:
            return None
        return base, latest

    def error_rate(self, window_s: float, now: float) -> tuple[float | None, int]:
        """(failed / completed requests in the window, completed requests).

        Failed means a 5xx answer (the backend's own or the proxy's 502/504) or a response the
        proxy had to cut off because the upstream broke mid-body. The proxy counts its own
        502/504 both as 5xx and as upstream_errors, while a cut-off response is only an
        upstream_error; the counters cannot tell the two apart, so cut-offs are estimated as
        the upstream_errors not covered by 5xx answers. That is exact when only one kind of
        failure happens in the window, and never counts an error twice.
        """
        span = self.span(window_s, now)
        if span is None:
            return None, 0
        base, latest = span
        server = latest.server_errors - base.server_errors
        upstream = latest.upstream_errors - base.upstream_errors
        cut_off = max(0, upstream - server)
        completed = latest.responses - base.responses + cut_off
        if completed <= 0:
            return None, 0
        return (server + cut_off) / completed, completed

    def latency_p99_ms(self, window_s: float, now: float) -> tuple[float | None, int]:
        return self.latency_quantile_ms(P99, window_s, now)

    def latency_quantile_ms(
        self, q: float, window_s: float, now: float
    ) -> tuple[float | None, int]:
        """(q-quantile of response latency in ms over the window, responses in the window)."""
        span = self.span(window_s, now)
        if span is None:
            return None, 0
        base, latest = span
        deltas = [
            (bound, n - m) for (bound, n), (_, m) in zip(latest.buckets, base.buckets, strict=True)
        ]
        total = deltas[-1][1] if deltas else 0
        if total <= 0:
            return None, 0
        return bucket_quantile(q, deltas) * 1000.0, total


def bucket_quantile(q: float, buckets: Sequence[tuple[float, int]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets, last = +Inf.

    Finds the bucket holding the rank q*total and interpolates linearly inside it (assuming
    observations spread evenly between its bounds). A rank in the +Inf bucket answers the
    largest finite bound, as Prometheus does: beyond it nothing is known.
    """
    total = buckets[-1][1]
    rank = q * total
    # The first bucket whose cumulative count reaches the rank (the +Inf one at the latest).
    i = next((i for i, (_, count) in enumerate(buckets) if count >= rank), len(buckets) - 1)
    bound, count = buckets[i]
    if math.isinf(bound):
        return buckets[i - 1][0] if i > 0 else math.nan
    if i == 0:
        if bound <= 0:
            return bound
        start, below = 0.0, 0
    else:
        start, below = buckets[i - 1]
    inside = count - below
    if inside <= 0:
        return bound
    return start + (bound - start) * (rank - below) / inside


class BuiltinSource:
    """Measures error_rate and latency_p99_ms from the router's per-color counters.

    One counters call per route serves every check measured at the same `now` (the engine
    measures all due checks of a tick with the same timestamp), and each route+color has one
    window whose history is long enough for the longest window asked of it.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        self.windows: dict[tuple[str, str], ProxyWindow] = {}
        self._polls: dict[
            str, tuple[float, asyncio.Future[Mapping[str, ColorCounters] | None]]
        ] = {}

    async def _counters(self, route: str, now: float) -> Mapping[str, ColorCounters] | None:
        poll = self._polls.get(route)
        if poll is None or poll[0] != now:
            task = asyncio.ensure_future(self.router.counters(route))
            # Mark its exception as seen even if every waiter was cancelled (no loop warning).
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            poll = self._polls[route] = (now, task)
        # shield: one caller being cancelled must not cancel the call others wait on.
        return await asyncio.shield(poll[1])

    async def measure(self, check: AnalysisCheck, target: Target, now: float) -> Measurement:
        if check.metric not in ("error_rate", "latency_p99_ms"):
            raise ValueError(f"the proxy does not measure {check.metric!r}")
        key = (target.route, target.color)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = ProxyWindow(check.window)
        window.keep = max(window.keep, check.window)
        try:
            colors = await self._counters(target.route, now)
        except (ProxyUnavailable, RouterError, OSError) as exc:
            return judge(check, None, None, f"proxy stats unavailable: {short(str(exc))}", now)
        if colors is None:
            return judge(check, None, None, f"no route {target.route} in the proxy", now)
        color = colors.get(target.color)
        if color is None:
            return judge(check, None, None, f"no traffic to {target.color} yet", now)
        # A second check of the same tick observes the same snapshot again: observe() keeps one.
        window.observe(color, now)
        if check.metric == "error_rate":
            value, samples = window.error_rate(check.window, now)
        else:
            value, samples = window.latency_p99_ms(check.window, now)
        span = window.span(check.window, now)
        covered = f" in {seconds(round(span[1].at - span[0].at, 3))}" if span else ""
        detail = f"{samples} requests{covered}"
        if span is None:
            detail = "waiting for a second sample of the counters"
        return judge(check, value, samples, detail, now)
