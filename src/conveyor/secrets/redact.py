"""Known secret values replaced with `[secret:NAME]` in whatever conveyor prints or stores.

Service logs, hook output, analysis command output, error messages, the history and webhook
payloads all pass through a `Redactor` that knows the values of the secrets resolved so far.
One regular expression of every value, longest first, so that a value containing another is
replaced whole, in one pass (a second pass could find a short value inside `[secret:NAME]`).

Besides the value itself, each line of a multi-line value (a PEM key is logged line by line)
and the value as a JSON string escapes it are replaced too. Values shorter than MIN_LENGTH
characters are not redacted: "1" or "yes" would blank out every number and word of a log and
tell a reader what the value is; `skipped` says which names were left out and why.

Standard library only: the log writer of local processes (runtimes/logshim.py, run with
`python -I -S`) imports this file by its path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

MIN_LENGTH = 4
# A line of a multi-line value is redacted on its own only when it is this long: short lines
# ("-----", "}") are not secret.
MIN_LINE = 8


def marker(name: str) -> str:
    return f"[secret:{name}]"


def variants(value: str) -> list[str]:
    """The forms of `value` that text may hold: itself, its lines, its JSON-escaped form."""
    found = [value]
    if "\n" in value:
        lines = (line.rstrip("\r") for line in value.split("\n"))
        found.extend(line for line in lines if len(line) >= MIN_LINE)
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    if escaped != value:
        found.append(escaped)
    return [v for i, v in enumerate(found) if v and v not in found[:i]]


class Redactor:
    """Replaces every known value; add values as secrets are resolved."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        self._names: dict[str, str] = {}  # a form of a value -> its secret's name
        self.skipped: dict[str, str] = {}  # name -> why it is not redacted
        self._text: re.Pattern[str] | None = None
        self._raw: re.Pattern[bytes] | None = None
        self._raw_names: dict[bytes, bytes] = {}
        if secrets:
            self.add(secrets)

    def add(self, secrets: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        items = secrets.items() if isinstance(secrets, Mapping) else secrets
        changed = False
        for name, value in items:
            if len(value) < MIN_LENGTH:
                self.skipped[name] = (
                    f"shorter than {MIN_LENGTH} characters: redacting it would blank out "
                    "ordinary text and hint at the value"
                )
                continue
            for form in variants(value):
                if form not in self._names:
                    self._names[form] = name
                    changed = True
        if changed:
            self._text = self._raw = None

    def __bool__(self) -> bool:
        return bool(self._names)

    @property
    def longest(self) -> int:
        """The longest form, in bytes (the log writer holds back this much of a long line)."""
        return max((len(v.encode()) for v in self._names), default=0)

    def _text_pattern(self) -> re.Pattern[str] | None:
        if self._text is None and self._names:
            forms = sorted(self._names, key=len, reverse=True)
            self._text = re.compile("|".join(re.escape(v) for v in forms))
        return self._text

    def raw_pattern(self) -> re.Pattern[bytes] | None:
        if self._raw is None and self._names:
            encoded = {v.encode(): n.encode() for v, n in self._names.items()}
            forms = sorted(encoded, key=len, reverse=True)
            self._raw = re.compile(b"|".join(re.escape(v) for v in forms))
            self._raw_names = {v: b"[secret:" + n + b"]" for v, n in encoded.items()}
        return self._raw

    def text(self, text: str) -> str:
        pattern = self._text_pattern()
        if pattern is None or not text:
            return text
        return pattern.sub(lambda m: marker(self._names[m.group(0)]), text)

    def raw(self, data: bytes) -> bytes:
        pattern = self.raw_pattern()
        if pattern is None or not data:
            return data
        return pattern.sub(lambda m: self._raw_names[m.group(0)], data)

    def safe_cut(self, data: bytes, end: int) -> int:
        """`end`, or a place near it that does not cut a value in two (for long log lines)."""
        pattern = self.raw_pattern()
        if pattern is None:
            return end
        for m in pattern.finditer(data, 0, end + self.longest):
            if m.start() < end < m.end():
                return m.start() if m.start() > 0 else m.end()
            if m.start() >= end:
                break
        return end

    def data(self, value: Any) -> Any:
        """JSON-like data (dicts, lists, strings) with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value
