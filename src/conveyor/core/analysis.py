"""Judging measurements and counting failures: the pure half of rollout analysis.

The metric sources (`conveyor.metrics`) do the I/O and hand a raw value here; `judge` turns it
into a verdict. The tally of verdicts (failure streaks, `failure_limit`, inconclusive) is the
rollout machine's (`conveyor.core.rollout`), so that one copy of that rule decides rollbacks.
Nothing here reads a clock: `now` is always passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.config.models import AnalysisCheck

# Metrics computed from the built-in proxy's counters: only these know how many requests a
# value rests on, so only these are held to `min_requests`.
BUILTIN_METRICS = frozenset({"error_rate", "latency_p99_ms"})


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Measurement:
    check: str  # the check's display name
    verdict: Verdict
    value: float | None
    detail: str  # for people: "0.4% ≤ 1% (1234 requests in 10s)", "no data", "HTTP 503"
    at: float  # the engine's clock when measured

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "verdict": str(self.verdict),
            "value": self.value,
            "detail": self.detail,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Measurement:
        value = data.get("value")
        return cls(
            check=str(data["check"]),
            verdict=Verdict(data["verdict"]),
            value=None if value is None else float(value),
            detail=str(data.get("detail", "")),
            at=float(data["at"]),
        )


def format_value(metric: str, value: float) -> str:
    """A value the way people read that metric: error_rate as a percentage, the rest plainly."""
    if math.isnan(value):
        return "NaN"
    if metric == "error_rate":
        return f"{_trim(value * 100)}%"
    if metric == "latency_p99_ms":
        # Milliseconds are in the name; below 10ms a decimal still says something.
        return f"{value:.0f}" if abs(value) >= 10 else _trim(value)
    return _trim(value)


def _trim(value: float) -> str:
    """At most 3 significant decimals after the point, no trailing zeros: 0.4, 12.35, 812."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if "e" not in text and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def compare(check: AnalysisCheck, value: float) -> tuple[bool, str]:
    """(within bounds?, "0.4% ≤ 1%" / "812 > 500"): the comparison judge() makes, in words."""
    fmt = format_value
    shown = fmt(check.metric, value)
    if check.max is not None and value > check.max:
        return False, f"{shown} > {fmt(check.metric, check.max)}"
    if check.min is not None and value < check.min:
        return False, f"{shown} < {fmt(check.metric, check.min)}"
    if check.min is not None and check.max is not None:
        low, high = fmt(check.metric, check.min), fmt(check.metric, check.max)
        return True, f"{low} ≤ {shown} ≤ {high}"
    if check.max is not None:
        return True, f"{shown} ≤ {fmt(check.metric, check.max)}"
    if check.min is not None:
        return True, f"{shown} ≥ {fmt(check.metric, check.min)}"
    return True, shown


def judge(
    check: AnalysisCheck, value: float | None, samples: int | None, detail: str, now: float
) -> Measurement:
    """The verdict on one measured value.

    No value (or NaN) is INCONCLUSIVE, and so is a built-in metric resting on fewer than
    `min_requests` requests: a handful of requests says little about an error rate. Otherwise
    a value above `max` or below `min` FAILs and anything else PASSes. `detail` from the source
    (sample count, error) is kept after the comparison.
    """
    name = check.display()
    if value is None or math.isnan(value):
        return Measurement(name, Verdict.INCONCLUSIVE, None, detail or "no data", now)
    if check.metric in BUILTIN_METRICS and (samples or 0) < check.min_requests:
        got = samples or 0
        text = f"not enough requests: {got} < {check.min_requests}"
        return Measurement(name, Verdict.INCONCLUSIVE, value, _join(text, detail), now)
    ok, text = compare(check, value)
    verdict = Verdict.PASS if ok else Verdict.FAIL
    return Measurement(name, verdict, value, _join(text, detail), now)


def _join(text: str, detail: str) -> str:
    return f"{text} ({detail})" if detail else text
