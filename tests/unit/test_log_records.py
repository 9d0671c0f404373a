"""The log records of local processes: how the log writer cuts lines (runtimes/logshim.py), how
readers parse and join them (runtimes/logfile.py). Plain values and small files."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.runtimes import logfile, logshim
from conveyor.runtimes.logfile import Joiner, LogLine, parse

AT = 1_764_467_524_123_456_789  # 2025-11-30T01:52:04.123456789Z


def records(data: bytes, stream: str = "stdout") -> tuple[list[LogLine], bytes]:
    written, rest = logshim.split(stream, data, AT)
    return [parse(raw) for raw in written.decode().split("\n")[:-1]], rest


def test_a_record_names_its_time_stream_and_whether_it_is_whole() -> None:
    raw = logshim.record("stderr", b"GET / 200", at_ns=AT)
    assert raw == b"2025-11-30T01:52:04.123456789Z stderr F GET / 200\n"
    assert parse(raw.decode().rstrip("\n")) == LogLine(
        "GET / 200", "2025-11-30T01:52:04.123456789Z", "stderr", False
    )


def test_whole_lines_become_records_and_the_rest_is_held() -> None:
    lines, rest = records(b"one\n\ntwo \x1b[31mred\x1b[0m\r\nthr")
    assert [(line.text, line.stream, line.partial) for line in lines] == [
        ("one", "stdout", False),
        ("", "stdout", False),
        ("two \x1b[31mred\x1b[0m\r", "stdout", False),
    ]
    assert rest == b"thr"


def test_a_line_of_exactly_the_limit_is_one_record() -> None:
    lines, rest = records(b"x" * logshim.LIMIT + b"\n")
    assert [(len(line.text), line.partial) for line in lines] == [(logshim.LIMIT, False)]
    assert rest == b""


def test_a_longer_line_is_cut_into_pieces_that_join_back() -> None:
    long = b"a" * (2 * logshim.LIMIT + 10)
    lines, rest = records(long + b"\nnext")
    assert [(len(line.text), line.partial) for line in lines] == [
        (logshim.LIMIT, True),
        (logshim.LIMIT, True),
        (10, False),
    ]
    assert rest == b"next"
    assert [line.text for line in logfile.read(_raw(lines))] == [long.decode()]


def test_a_long_line_is_not_cut_inside_a_character() -> None:
    # "é" is two bytes: with one byte of padding, the limit falls inside one of them.
    long = b"x" + "é".encode() * logshim.LIMIT
    lines, rest = records(long, "stderr")
    assert lines[0].partial and len(lines[0].text.encode()) == logshim.LIMIT - 1
    assert all("\ufffd" not in line.text for line in lines)
    assert b"".join(line.text.encode() for line in lines) + rest == long


def test_a_long_line_waits_for_its_newline_below_the_limit() -> None:
    lines, rest = records(b"b" * logshim.LIMIT)
    assert lines == [] and len(rest) == logshim.LIMIT


def test_pieces_join_per_stream_when_the_streams_interleave() -> None:
    joiner = Joiner()
    shown = list(
        joiner.feed(
            [
                LogLine("ab", "t1", "stdout", True),
                LogLine("oops", "t2", "stderr", False),
                LogLine("cd", "t3", "stdout", True),
            ]
        )
    )
    assert shown == [LogLine("oops", "t2", "stderr")]
    # A follower feeds what comes next to the same joiner.
    shown = list(joiner.feed([LogLine("ef", "t4", "stdout", False)]))
    assert shown == [LogLine("abcdef", "t1", "stdout")]  # the time of its first piece
    assert list(joiner.rest()) == []


def test_a_line_still_in_pieces_at_the_end_is_shown_as_it_is() -> None:
    joined = logfile.read(["2025-11-30T01:52:04Z stdout P half"])
    assert joined == [LogLine("half", "2025-11-30T01:52:04Z", "stdout", True)]


def test_lines_that_are_not_records_read_as_they_are() -> None:
    # A log written before the log writer: no time, no stream.
    for raw in ("GET / 200", "2025-11-30T01:52:04Z stdout X what", "--- start ---", ""):
        assert parse(raw) == LogLine(raw)


def test_tail_gives_the_apps_text_and_splits_at_newlines_alone(tmp_path: Path) -> None:
    log = tmp_path / "blue.log"
    log.write_bytes(
        logshim.record("conveyor", b"--- start web blue v1 ---", at_ns=AT)
        + logshim.record("stdout", b"progress 10%\rprogress 20%", at_ns=AT)
        + logshim.record("stderr", b"x" * 5, True, at_ns=AT)
        + logshim.record("stderr", b"y" * 5, at_ns=AT)
        + b"a line from before\n"
    )
    assert logfile.tail(log, 3) == [
        "progress 10%\rprogress 20%",
        "xxxxxyyyyy",
        "a line from before",
    ]
    assert [line.stream for line in logfile.tail_lines(log, 10)] == [
        "conveyor",
        "stdout",
        "stderr",
        None,
    ]
    assert logfile.tail(log, 0) == [] and logfile.tail(tmp_path / "none.log") == []


def _raw(lines: list[LogLine]) -> list[str]:
    return [
        f"{line.time} {line.stream} {'P' if line.partial else 'F'} {line.text}" for line in lines
    ]


@pytest.mark.parametrize("at", [0, AT, 999_999_999])
def test_times_have_nanoseconds(at: int) -> None:
    stamp = logshim.stamp(at).decode()
    assert len(stamp) == len("2025-11-30T01:52:04.123456789Z") and stamp.endswith("Z")
    assert parse(f"{stamp} stdout F x").time == stamp
