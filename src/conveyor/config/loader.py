"""Load conveyor.toml into a Config, with errors that name the file, the line and the key."""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from conveyor.config.capabilities import router_issues
from conveyor.config.environments import resolve_environment
from conveyor.config.errors import BARE_KEY, ConfigError, Issue, display_path, dotted_key
from conveyor.config.models import Config
from conveyor.config.pydantic_errors import issues_from_validation
from conveyor.routers.kinds import ROUTER_FEATURES

CONFIG_NAME = "conveyor.toml"


def find_config(start: Path) -> Path:
    """The nearest conveyor.toml in `start` or one of its parents."""
    start = start.resolve()
    directory = start if start.is_dir() else start.parent
    for candidate_dir in (directory, *directory.parents):
        candidate = candidate_dir / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        None,
        None,
        "",
        f"no {CONFIG_NAME} in {directory} or any parent directory "
        "(run `conveyor init` to create one)",
    )


def load_config(
    path: Path, router_features: Mapping[str, frozenset[str]] = ROUTER_FEATURES
) -> Config:
    """Read, validate and resolve every environment; `router_features`: what each router can do."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, "", f"cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(path, text, exc) from None

    if not data:
        # Not a list of missing keys: what is missing is the whole file.
        raise ConfigError(
            None,
            None,
            "",
            f"{display_path(path)} is empty: it needs at least [app] name and one "
            "[services.NAME] (`conveyor init` writes a commented one)",
        )
    locator = KeyLocator(text)
    if "source" in data:
        # `source` is a field of Config (where the file was read from), not a key of the file.
        raise _located(path, locator, [Issue(("source",), "unknown key 'source'", "unknown")])
    try:
        config = Config.model_validate({**data, "source": path})
    except ValidationError as err:
        raise _located(path, locator, issues_from_validation(err, Config)) from None

    # Resolve every environment now, so that a bad override fails `conveyor deploy` for any
    # environment at once instead of waiting for someone to deploy the broken one.
    issues: list[Issue] = []
    features = router_features[config.router.kind]
    for name in config.environments:
        env, found = resolve_environment(config, name)
        issues.extend(found)
        if env is not None:
            issues.extend(router_issues(config, env, features))
    if issues:
        raise _located(path, locator, issues)
    return config


def _located(path: Path, locator: KeyLocator, issues: Sequence[Issue]) -> ConfigError:
    unique = list(dict.fromkeys(issues))
    # A misspelt key also shows up as the key it should have been being missing; the unknown-key
    # error (with its "did you mean") is the one worth reading.
    hinted = {(*i.path[:-1], i.hint) for i in unique if i.kind == "unknown" and i.hint}
    unique = [i for i in unique if not (i.kind == "missing" and i.path in hinted)]
    errors = [
        ConfigError(path, locator.line_of(i.path), dotted_key(i.path), i.message) for i in unique
    ]
    errors.sort(key=lambda e: e.line if e.line is not None else float("inf"))
    first, *rest = errors
    return ConfigError(first.file, first.line, first.key, first.message, more=rest)


# --- TOML syntax errors ------------------------------------------------------------------------

_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]#]+?)\s*\]\]?\s*(#.*)?$")
# A header whose closing bracket is what is broken.
_OPEN_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\s\"'-]*[A-Za-z0-9_\"'-])")
_ASSIGNMENT = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)


def _syntax_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(exc)
    match = _POSITION.search(message)
    if match is None:
        # "(at end of document)": the last line is where the reader gave up.
        line = max(1, len(text.splitlines()))
        message = message.replace(" (at end of document)", " at end of file")
    else:
        line = int(match.group(1))
        message = f"{message[: match.start()]} (column {match.group(2)})"
    message = f"TOML syntax error: {message[:1].lower()}{message[1:]}"
    return ConfigError(path, line, _key_near(text, line), message)


def _key_near(text: str, line: int) -> str:
    """Best guess of the key on a line of broken TOML: the table we are in plus the line's key."""
    table = ""
    lines = text.splitlines()
    for number, content in enumerate(lines[: line - 1], start=1):
        header = _HEADER.match(content)
        if header and number < line:
            table = _normalise_key(header.group(1))
    current = lines[line - 1] if 0 < line <= len(lines) else ""
    header = _HEADER.match(current) or _OPEN_HEADER.match(current)
    if header:
        return _normalise_key(header.group(1))
    assignment = _ASSIGNMENT.match(current)
    if assignment:
        key = _normalise_key(assignment.group(1))
        return f"{table}.{key}" if table else key
    return table


def _normalise_key(raw: str) -> str:
    return re.sub(r"\s*\.\s*", ".", raw.strip())


# --- locating keys in valid TOML ---------------------------------------------------------------


class KeyLocator:
    """Maps key paths to the line where they are written in a (syntactically valid) TOML text.

    Knows tables, arrays of tables, dotted keys and inline tables; a key in an inline table
    maps to the line of that table. Tables only implied by a deeper header or a dotted key
    (`[services.web.health]` implies `services.web`) map to the first line that implies them.

    Paths into arrays carry the index, as pydantic's error locations do: the second
    `[[rollout.analysis]]` block is ("rollout", "analysis", "1"), and the element of an inline
    array maps to the line it starts on. Keys of an array of tables are also found without the
    index, at their first occurrence.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        scanner = _Scanner(text, self.lines)
        # The text is valid TOML (tomllib read it), so a failure here is a gap in this small
        # scanner: what was found so far is still good, and lookups fall back to parents.
        with contextlib.suppress(IndexError, ValueError):
            scanner.document()

    def line_of(self, path: Sequence[str]) -> int | None:
        """The line of `path`, or of its nearest written parent (e.g. the table of a missing key)."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return None


_SCALAR = re.compile(r"[^\s,\]}#]+")
_TIME_AFTER_DATE = re.compile(r" \d\d:\d\d")


class _Scanner:
    def __init__(self, text: str, found: dict[tuple[str, ...], int]) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.found = found

    def document(self) -> None:
        table: tuple[str, ...] = ()  # the current table's path, with array indices
        written: tuple[str, ...] = ()  # the same, as written in its header (no indices)
        # The index of the last element of each array of tables, by its path with indices.
        arrays: dict[tuple[str, ...], int] = {}
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            if self.text.startswith("[", self.pos):
                double = self.text.startswith("[[", self.pos)
                self.advance(2 if double else 1)
                self.skip_blank()
                written = self.key()
                table = _with_indices(written, arrays, double)
                self.record(table)
                self.record(written)
                self.skip_blank()
                self.advance(2 if double else 1)
            else:
                key = self.key()
                self.record((*table, *key))
                self.record((*written, *key))
                self.skip_blank()
                self.advance(1)  # "="
                self.value((*table, *key))

    def record(self, path: tuple[str, ...]) -> None:
        for end in range(1, len(path) + 1):
            self.found.setdefault(path[:end], self.line)

    def advance(self, count: int) -> None:
        chunk = self.text[self.pos : self.pos + count]
        self.line += chunk.count("\n")
        self.pos += count

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_blank(self, newlines: bool = False) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.advance(1)
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end == -1 else end
            else:
                return

    def key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self.skip_blank()
            char = self.peek()
            if char in "\"'":
                parts.append(self.string())
            else:
                match = BARE_KEY.match(self.text, self.pos)
                if match is None:
                    raise ValueError(f"no key at offset {self.pos}")
                parts.append(match.group())
                self.advance(len(match.group()))
            self.skip_blank()
            if self.peek() != ".":
                return tuple(parts)
            self.advance(1)

    def string(self) -> str:
        for quote in ('"""', "'''"):
            if self.text.startswith(quote, self.pos):
                end = self.text.index(quote, self.pos + 3)
                # A closing delimiter may be followed by up to two more quotes of content.
                while self.text.startswith(quote[0], end + 3):
                    end += 1
                value = self.text[self.pos + 3 : end]
                self.advance(end + 3 - self.pos)
                return value
        quote = self.peek()
        index = self.pos + 1
        while self.text[index] != quote:
            index += 2 if quote == '"' and self.text[index] == "\\" else 1
        raw = self.text[self.pos + 1 : index]
        self.advance(index + 1 - self.pos)
        if quote == '"':
            # Only keys need the decoded text; tomllib has already checked the escapes.
            decoded: Any = tomllib.loads(f'k = "{raw}"')["k"]
            return str(decoded)
        return raw

    def value(self, path: tuple[str, ...]) -> None:
        self.skip_blank()
        char = self.peek()
        if char in "\"'":
            self.string()
        elif char == "{":
            self.inline_table(path)
        elif char == "[":
            self.array(path)
        else:
            match = _SCALAR.match(self.text, self.pos)
            self.advance(len(match.group()) if match else 1)
            # Datetimes may contain one space ("1979-05-27 07:32:00").
            if _TIME_AFTER_DATE.match(self.text, self.pos):
                self.value(path)

    def inline_table(self, path: tuple[str, ...]) -> None:
        self.advance(1)
        while True:
            self.skip_blank()
            if self.peek() == "}":
                self.advance(1)
                return
            if self.peek() == ",":
                self.advance(1)
                continue
            key = (*path, *self.key())
            self.record(key)
            self.skip_blank()
            self.advance(1)  # "="
            self.value(key)

    def array(self, path: tuple[str, ...]) -> None:
        self.advance(1)
        index = 0
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "]":
                self.advance(1)
                return
            if self.peek() == ",":
                self.advance(1)
                index += 1
                continue
            self.record((*path, str(index)))
            self.value((*path, str(index)))


def _with_indices(
    header: tuple[str, ...], arrays: dict[tuple[str, ...], int], new_element: bool
) -> tuple[str, ...]:
    """The path of the table a header opens: `[a.b]` after `[[a]]` is inside a's last element.

    For an array-of-tables header (`new_element`), this is a new element of that array.
    """
    path: tuple[str, ...] = ()
    for number, part in enumerate(header, start=1):
        path = (*path, part)
        if new_element and number == len(header):
            arrays[path] = arrays.get(path, -1) + 1
        if path in arrays:
            path = (*path, str(arrays[path]))
    return path
