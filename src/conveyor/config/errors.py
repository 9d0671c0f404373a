"""Errors in conveyor.toml located by file, line and key, and the problems they are made from.

A check finds an `Issue` (a key path and a message); the loader locates issues in the source text
and turns them into one `ConfigError`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    """A problem in conveyor.toml, located as precisely as we can: file, line and dotted key.

    `more` holds further problems found in the same pass; str() puts each on its own line,
    the most relevant one first.
    """

    def __init__(
        self,
        file: Path | None,
        line: int | None,
        key: str,
        message: str,
        *,
        more: Sequence[ConfigError] = (),
    ) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        self.more = tuple(more)

    def headline(self) -> str:
        where = display_path(self.file) if self.file is not None else ""
        if where and self.line is not None:
            where = f"{where}:{self.line}"
        return ": ".join(part for part in (where, self.key, self.message) if part)

    def __str__(self) -> str:
        return "\n".join([self.headline(), *(other.headline() for other in self.more)])


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


@dataclass(frozen=True)
class Issue:
    """One validation problem before it is located in the source text.

    `path` is the key path in the TOML document; `kind` is "unknown", "missing" or "invalid";
    for an unknown key, `hint` is the valid key it most resembles.
    """

    path: tuple[str, ...]
    message: str
    kind: str = "invalid"
    hint: str | None = None


_TOML_TYPES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    dict: "a table",
    list: "an array",
}


def toml_type(value: object) -> str | None:
    """What `value` is called in TOML ("a boolean", "a table"), if it is one of TOML's types."""
    return _TOML_TYPES.get(type(value))


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


class LocatedValueError(ValueError):
    """A validation error that names the key it is about, below the value being validated.

    A check that spans several keys (weights across canary steps, a metric and its query) runs
    on the enclosing value, but the error is worth reporting at the key the user has to change:
    `path` is that key relative to the value, e.g. ("2", "weight") under `steps`.
    """

    def __init__(self, message: str, *path: str) -> None:
        super().__init__(message)
        self.path = path


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dotted_key(path: Sequence[str]) -> str:
    """A key path as written in TOML: bare keys as they are, anything else quoted."""
    if path and path[0].startswith("--"):
        return path[0]
    return ".".join(part if BARE_KEY.fullmatch(part) else f'"{part}"' for part in path)
