"""The `prometheus` check: one instant query against the Prometheus HTTP API.

A Prometheus outage (connection refused, timeout, a 5xx) is INCONCLUSIVE, never FAIL: the
release may be perfectly fine, and rolling back a good release because the monitoring went
down would turn one incident into two. `on_inconclusive` decides what happens meanwhile.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from typing import TYPE_CHECKING, Any

from conveyor.core.analysis import Measurement, judge
from conveyor.metrics.base import MissingPlaceholder, Target, short, substitute
from conveyor.metrics.http import FetchError, fetch

if TYPE_CHECKING:
    from conveyor.config.models import AnalysisCheck

DEFAULT_URL = "http://127.0.0.1:9090"


def query_url(base: str, query: str) -> str:
    return f"{base.rstrip('/')}/api/v1/query?query={urllib.parse.quote(query, safe='')}"


def read_result(status: int, body: bytes) -> tuple[float | None, str]:
    """(value, "") from an /api/v1/query answer, or (None, why there is no value)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None, f"HTTP {status}: not a Prometheus API answer"
    if not isinstance(answer, dict):
        return None, f"HTTP {status}: not a Prometheus API answer"
    if answer.get("status") != "success":
        error = answer.get("error") or f"HTTP {status}"
        return None, f"prometheus: {short(str(error))}"
    data = answer.get("data")
    if not isinstance(data, dict):
        return None, "prometheus: answer without data"
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _sample(result)
    if kind == "vector" and isinstance(result, list):
        if not result:
            return None, "no data"
        if len(result) > 1:
            return None, f"query returned {len(result)} series; aggregate it (e.g. sum(...))"
        series = result[0]
        return _sample(series.get("value") if isinstance(series, dict) else None)
    return None, f"query returned a {kind}; use an instant vector or a scalar"


def _sample(pair: Any) -> tuple[float | None, str]:
    # Samples are [timestamp, "value"]; the value is a string so that NaN and ±Inf survive JSON.
    try:
        value = float(pair[1])
    except (TypeError, ValueError, IndexError):
        return None, "prometheus: malformed sample"
    if math.isnan(value):
        return None, "no data"
    return value, ""


class PrometheusSource:
    async def measure(self, check: AnalysisCheck, target: Target, now: float) -> Measurement:
        if check.query is None:
            raise ValueError(f"check {check.display()} has no query")
        try:
            query = substitute(check.query, target)
        except MissingPlaceholder as exc:
            return judge(check, None, None, str(exc), now)
        url = query_url(check.url or DEFAULT_URL, query)
        try:
            status, body = await fetch(url, check.timeout)
        except FetchError as exc:
            return judge(check, None, None, f"prometheus unreachable: {exc}", now)
        value, why = read_result(status, body)
        return judge(check, value, None, why, now)
