"""Dotenv files (`.env.local`): read into names and values, and written back. Pure.

The common dialect: `NAME=value`, an optional `export ` before the name, `#` comments on lines
of their own or after an unquoted value, single quotes taken literally, double quotes with the
escapes \\n \\t \\" \\\\ and values spanning lines. No variable expansion: a value is what is
written, so `$` in a password stays a `$`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


class DotenvError(ValueError):
    """A line that does not read as NAME=value; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Entry:
    name: str
    value: str
    line: int


def parse(text: str) -> list[Entry]:
    """Every assignment in `text`, in order (a name given twice: both, the last one wins)."""
    entries: list[Entry] = []
    # Only \n (and \r\n) end a line: str.splitlines() would also split on \x1e, \x85, ...
    lines = text.replace("\r\n", "\n").split("\n")
    index = 0
    while index < len(lines):
        number = index + 1
        raw = lines[index].strip()
        index += 1
        if not raw or raw.startswith("#"):
            continue
        if raw.startswith("export "):
            raw = raw[len("export ") :].lstrip()
        name, sep, rest = raw.partition("=")
        name = name.strip()
        if not sep:
            # The line itself is not shown: it may be a value that lost its name.
            raise DotenvError(number, "expected NAME=value")
        if not _NAME.fullmatch(name):
            raise DotenvError(number, f"invalid name {_shown(name)}")
        rest = rest.lstrip()
        if rest.startswith(("'", '"')):
            quote = rest[0]
            body = rest[1:]
            # A quoted value may go on over the next lines until its closing quote.
            while _closing(body, quote) < 0 and index < len(lines):
                body += "\n" + lines[index]
                index += 1
            end = _closing(body, quote)
            if end < 0:
                raise DotenvError(number, f"{name}: the {quote} quote is never closed")
            tail = body[end + 1 :].strip()
            if tail and not tail.startswith("#"):
                raise DotenvError(number, f"{name}: unexpected text after the closing quote")
            value = body[:end] if quote == "'" else _unescape(body[:end])
        else:
            value = re.split(r"\s+#", rest, maxsplit=1)[0].rstrip()
        entries.append(Entry(name, value, number))
    return entries


def _closing(body: str, quote: str) -> int:
    """Index of the quote that ends `body`, or -1 (a double quote may be escaped)."""
    escaped = False
    for position, char in enumerate(body):
        if quote == '"' and char == "\\" and not escaped:
            escaped = True
            continue
        if char == quote and not escaped:
            return position
        escaped = False
    return -1


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], "\\" + m[1]), text, flags=re.S)


def _shown(text: str) -> str:
    return repr(text[:40] + ("…" if len(text) > 40 else ""))


def format_entry(name: str, value: str) -> str:
    """One `NAME="value"` line that `parse` (and python-dotenv) read back as `value`."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("$", "\\$")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'{name}="{escaped}"'
