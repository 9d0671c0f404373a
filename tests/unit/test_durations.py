from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h2m3s", 3723.0),
        ("1.5s", 1.5),
        ("0.25h", 900.0),
        (".5s", 0.5),
        ("1s500ms", 1.5),
        ("  2s ", 2.0),
        ("0s", 0.0),
        (3, 3.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_accepts(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("-1s", "negative"),
        (-1, "negative"),
        (-0.5, "negative"),
        ("fast", "invalid duration 'fast'"),
        ("10x", "invalid duration '10x'"),
        ("10 s", "invalid duration"),
        ("1m 30s", "invalid duration"),
        ("30s1m", "largest to smallest"),
        ("1s1s", "largest to smallest"),
        ("30", "has no unit"),
        ("s", "invalid duration"),
        (True, "invalid duration True"),
        (None, "invalid duration None"),
        ([1], "invalid duration"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
    ],
)
def test_parse_rejects_with_a_message_saying_what_is_accepted(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    message = str(caught.value)
    assert fragment in message
    if "negative" not in fragment and "finite" not in fragment:
        assert "500ms, 2s, 5m, 1h" in message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (0.001, "1ms"),
        (1.5, "1.5s"),
        (2, "2s"),
        (30, "30s"),
        (90, "1m30s"),
        (600, "10m"),
        (3600, "1h"),
        (3605, "1h5s"),
        (5400, "1h30m"),
        (90.5, "1m30.5s"),
    ],
)
def test_format_is_compact(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_format_rejects_non_durations(bad: float) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_format_then_parse_round_trips_floats(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**9))
def test_format_then_parse_round_trips_whole_seconds(seconds: int) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert "." not in text


@given(st.integers(min_value=0, max_value=10**6).map(lambda ms: ms / 1000))
def test_format_then_parse_round_trips_milliseconds(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1, "1s"),  # not "1000ms": milliseconds are for less than a second
        (60.5, "1m0.5s"),
        (59.5, "59.5s"),
        (0.0005, "0.5ms"),
    ],
)
def test_format_at_the_edges_of_each_form(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "invalid duration nan (must be a finite number of seconds)"),
        ("9" * 400 + "h", f"invalid duration '{'9' * 400}h' (must be a finite number of seconds)"),
        (-2, "negative duration -2 (durations must be >= 0)"),
    ],
)
def test_parse_errors_name_the_value(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert str(caught.value) == message


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_format_refuses_what_is_not_a_duration(seconds: float) -> None:
    with pytest.raises(ValueError, match=rf"^cannot format duration {seconds!r}$"):
        format_duration(seconds)
