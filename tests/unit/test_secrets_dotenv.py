"""Dotenv files, read and written (conveyor.core.dotenv)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.core.dotenv import DotenvError, format_entry, parse

TEXT = """\
# a comment
export DATABASE_URL=postgres://u:p@h/db
PLAIN = value with spaces   # a comment after it
EMPTY=
SINGLE='literal $HOME \\n stays'
DOUBLE="line one\\nline two \\"quoted\\" \\\\ back"
MULTI="first
second"
HASH=abc#not-a-comment
"""


def test_the_common_dialect_reads() -> None:
    found = {e.name: e.value for e in parse(TEXT)}
    assert found == {
        "DATABASE_URL": "postgres://u:p@h/db",
        "PLAIN": "value with spaces",
        "EMPTY": "",
        "SINGLE": "literal $HOME \\n stays",
        "DOUBLE": 'line one\nline two "quoted" \\ back',
        "MULTI": "first\nsecond",
        "HASH": "abc#not-a-comment",
    }
    assert [e.line for e in parse(TEXT)] == [2, 3, 4, 5, 6, 7, 9]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("A=1\njust some words\n", 2, "expected NAME=value"),
        ("A=1\n1BAD=x\n", 2, "invalid name '1BAD'"),
        ('A="never closed\nB=2\n', 1, "never closed"),
        ("A='x' trailing\n", 1, "after the closing quote"),
    ],
)
def test_a_broken_line_is_named(text: str, line: int, message: str) -> None:
    with pytest.raises(DotenvError, match=message) as caught:
        parse(text)
    assert caught.value.line == line


def test_a_line_without_a_name_is_not_quoted() -> None:
    with pytest.raises(DotenvError) as caught:
        parse("hunter2-the-password\n")
    assert "hunter2" not in str(caught.value)


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=50))
def test_what_is_written_reads_back(value: str) -> None:
    [entry] = parse(format_entry("NAME", value))
    assert entry.value == value
