"""conveyor.core.analysis: judge and format_value; and the pure helpers of the metric sources.

The tally of verdicts (streaks, failure_limit) is the rollout machine's: tests/unit/test_rollout_rules.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from conveyor.config.models import AnalysisCheck
from conveyor.core.analysis import Measurement, Verdict, compare, format_value, judge
from conveyor.metrics.base import MissingPlaceholder, Target, json_field, substitute
from conveyor.metrics.prometheus import query_url, read_result

ERRORS = AnalysisCheck(metric="error_rate", max=0.01, min_requests=50)
P99 = AnalysisCheck(metric="latency_p99_ms", max=500, failure_limit=2)


# --- judge ---------------------------------------------------------------------------------------


def test_judge_pass_and_fail_against_max() -> None:
    ok = judge(ERRORS, 0.004, 1234, "1234 requests in 10s", 7.0)
    assert ok == Measurement(
        "error_rate", Verdict.PASS, 0.004, "0.4% ≤ 1% (1234 requests in 10s)", 7.0
    )
    bad = judge(P99, 812.0, 100, "", 8.0)
    assert bad.verdict is Verdict.FAIL
    assert bad.detail == "812 > 500"


def test_judge_value_equal_to_the_bound_passes() -> None:
    assert judge(ERRORS, 0.01, 100, "", 0).verdict is Verdict.PASS


def test_judge_min_and_both_bounds() -> None:
    check = AnalysisCheck(metric="prometheus", query="up", min=0.5, max=2)
    assert judge(check, 0.4, None, "", 0).detail == "0.4 < 0.5"
    assert judge(check, 0.4, None, "", 0).verdict is Verdict.FAIL
    assert judge(check, 3, None, "", 0).verdict is Verdict.FAIL
    assert judge(check, 1, None, "", 0).detail == "0.5 ≤ 1 ≤ 2"
    assert judge(check, 1, None, "", 0).verdict is Verdict.PASS


def test_judge_no_value_or_nan_is_inconclusive() -> None:
    assert judge(ERRORS, None, 0, "", 0).verdict is Verdict.INCONCLUSIVE
    assert judge(ERRORS, None, 0, "", 0).detail == "no data"
    nan = judge(AnalysisCheck(metric="prometheus", query="x", max=1), math.nan, None, "", 0)
    assert nan.verdict is Verdict.INCONCLUSIVE and nan.value is None


def test_judge_too_few_requests_is_inconclusive_for_builtin_metrics_only() -> None:
    few = judge(ERRORS, 0.5, 49, "49 requests in 10s", 0)
    assert few.verdict is Verdict.INCONCLUSIVE
    assert few.detail == "not enough requests: 49 < 50 (49 requests in 10s)"
    assert judge(ERRORS, 0.5, 50, "", 0).verdict is Verdict.FAIL
    prom = AnalysisCheck(metric="prometheus", query="x", max=0.01)
    assert judge(prom, 0.5, None, "", 0).verdict is Verdict.FAIL


def test_format_value_per_metric() -> None:
    assert format_value("error_rate", 0.004) == "0.4%"
    assert format_value("error_rate", 0.0123) == "1.23%"
    assert format_value("error_rate", 1.0) == "100%"
    assert format_value("latency_p99_ms", 812.4) == "812"
    assert format_value("latency_p99_ms", 2.5) == "2.5"
    assert format_value("prometheus", 0.1) == "0.1"
    assert format_value("prometheus", math.inf) == "inf"


@pytest.mark.parametrize(
    ("metric", "value", "text"),
    [
        ("prometheus", math.nan, "NaN"),
        ("prometheus", -math.inf, "-inf"),
        ("prometheus", 0.0123, "0.0123"),  # three significant digits below 1
        ("prometheus", 812.4, "812.4"),  # two decimals at most above it
        ("prometheus", 2.001, "2"),
        ("prometheus", 1.5e-10, "1.5e-10"),  # an exponent keeps its zeros
        ("prometheus", 1e15, "1000000000000000"),
        ("latency_p99_ms", 10.4, "10"),  # whole milliseconds from 10ms up
        ("latency_p99_ms", 9.75, "9.75"),
    ],
)
def test_format_value_edges(metric: str, value: float, text: str) -> None:
    assert format_value(metric, value) == text


LATENCY_BAND = AnalysisCheck(metric="latency_p99_ms", min=10.4, max=500)


@pytest.mark.parametrize(
    ("check", "value", "expected"),
    [
        (LATENCY_BAND, 100.0, (True, "10 ≤ 100 ≤ 500")),
        (LATENCY_BAND, 10.4, (True, "10 ≤ 10 ≤ 500")),  # equal to a bound passes
        (LATENCY_BAND, 9.5, (False, "9.5 < 10")),
        (AnalysisCheck(metric="latency_p99_ms", min=1, max=20.4), 5.0, (True, "1 ≤ 5 ≤ 20")),
        (AnalysisCheck(metric="latency_p99_ms", min=12.4), 20.0, (True, "20 ≥ 12")),
        (AnalysisCheck(metric="latency_p99_ms", min=12.4), 2.0, (False, "2 < 12")),
        (AnalysisCheck(metric="http", url="http://127.0.0.1:1/"), 5.0, (True, "5")),
    ],
)
def test_compare(check: AnalysisCheck, value: float, expected: tuple[bool, str]) -> None:
    assert compare(check, value) == expected


def test_judge_keeps_the_name_value_and_time_when_inconclusive() -> None:
    assert judge(ERRORS, None, 0, "proxy down", 4.5) == Measurement(
        "error_rate", Verdict.INCONCLUSIVE, None, "proxy down", 4.5
    )
    assert judge(ERRORS, 0.5, 3, "", 4.5) == Measurement(
        "error_rate", Verdict.INCONCLUSIVE, 0.5, "not enough requests: 3 < 50", 4.5
    )
    one = AnalysisCheck(metric="error_rate", max=0.01, min_requests=1)
    assert judge(one, 0.5, None, "", 0) == Measurement(
        "error_rate", Verdict.INCONCLUSIVE, 0.5, "not enough requests: 0 < 1", 0
    )


def test_measurement_from_json_without_value_or_detail() -> None:
    data = {"check": "http", "verdict": "fail", "value": None, "at": 2}
    assert Measurement.from_json(data) == Measurement("http", Verdict.FAIL, None, "", 2.0)


def test_measurement_json_round_trip() -> None:
    meas = judge(ERRORS, 0.02, 100, "", 3.5)
    data = meas.to_json()
    assert data == {
        "check": "error_rate",
        "verdict": "fail",
        "value": 0.02,
        "detail": "2% > 1%",
        "at": 3.5,
    }
    assert Measurement.from_json(json.loads(json.dumps(data))) == meas


# --- helpers of the sources (pure) --------------------------------------------------------------

TARGET = Target("shop", "dev", "web", "green", "v2", 4100, Path("/tmp"), "dev/web")


def test_substitute_keeps_promql_braces() -> None:
    q = 'sum(rate(x{app="{app}",env="{environment}",svc="{service}",version="{version}",c="{color}"}[1m]))'
    assert substitute(q, TARGET) == (
        'sum(rate(x{app="shop",env="dev",svc="web",version="v2",c="green"}[1m]))'
    )
    assert substitute("http://127.0.0.1:{port}/x", TARGET) == "http://127.0.0.1:4100/x"
    with pytest.raises(MissingPlaceholder):
        substitute("{port}", Target("a", "e", "s", "c", "v", None, Path("/"), "e/s"))


@pytest.mark.parametrize(
    ("doc", "path", "expected"),
    [
        ({"a": {"b": 0.5}}, "a.b", 0.5),
        ({"a": [{"v": 3}]}, "a.0.v", 3.0),
        ({"a": 1}, "b", None),
        ({"a": True}, "a", None),
        ({"a": "1"}, "a", None),
        ([1, 2], "5", None),
    ],
)
def test_json_field(doc: Any, path: str, expected: float | None) -> None:
    value, why = json_field(doc, path)
    assert value == expected
    assert (why == "") == (expected is not None)


def _answer(kind: str, result: Any) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": kind, "result": result}}
    ).encode()


def test_read_prometheus_results() -> None:
    assert read_result(200, _answer("scalar", [1.0, "0.25"])) == (0.25, "")
    assert read_result(200, _answer("vector", [{"metric": {}, "value": [1.0, "0.1"]}])) == (0.1, "")
    assert read_result(200, _answer("vector", [])) == (None, "no data")
    assert read_result(200, _answer("vector", [{"metric": {}, "value": [1.0, "NaN"]}])) == (
        None,
        "no data",
    )
    two = [{"metric": {"a": "1"}, "value": [1, "1"]}, {"metric": {"a": "2"}, "value": [1, "2"]}]
    assert read_result(200, _answer("vector", two)) == (
        None,
        "query returned 2 series; aggregate it (e.g. sum(...))",
    )
    assert read_result(200, _answer("matrix", []))[0] is None
    error = json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"})
    assert read_result(400, error.encode()) == (None, "prometheus: parse error")
    assert read_result(502, b"<html>bad gateway</html>") == (
        None,
        "HTTP 502: not a Prometheus API answer",
    )


def test_query_url_encodes_the_query() -> None:
    url = query_url("http://127.0.0.1:9090/", 'sum(x{a="b"})')
    assert url == "http://127.0.0.1:9090/api/v1/query?query=sum%28x%7Ba%3D%22b%22%7D%29"
