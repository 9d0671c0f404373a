"""Durations as written in conveyor.toml ("500ms", "2s", "1m30s") <-> seconds as floats.

Pure functions: no clock, no I/O. Bare numbers (TOML ints and floats) are seconds.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

ACCEPTED = "use 500ms, 2s, 5m, 1h, or combined like 1m30s"

# Largest unit first: a compound duration must list its units in this order, each at most once,
# so "1m30s" is fine and "30s1m" (almost certainly a typo) is refused.
_UNIT_ORDER = ("h", "m", "s", "ms")
_SECONDS_PER = {"h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|h|m|s)")


def parse_duration(value: object) -> float:
    """Return `value` in seconds; ValueError (saying what is accepted) when it is not a duration."""
    # bool is an int subclass: `interval = true` is a mistake, not one second.
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} ({ACCEPTED})")
    if isinstance(value, int | float):
        return _checked(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r} ({ACCEPTED})")
    text = value.strip()
    if not text:
        raise ValueError(f"empty duration ({ACCEPTED})")
    if text.startswith("-"):
        raise ValueError(f"negative duration {value!r} (durations must be >= 0)")
    total = 0.0
    position = 0
    last_rank = -1
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        number, unit = match.groups()
        rank = _UNIT_ORDER.index(unit)
        if rank <= last_rank:
            raise ValueError(
                f"invalid duration {value!r}: units must go from largest to smallest, "
                f"each at most once ({ACCEPTED})"
            )
        last_rank = rank
        total += _scale(float(number), unit)
        position = match.end()
    if position == 0 and _is_number(text):
        raise ValueError(f"duration {value!r} has no unit ({ACCEPTED})")
    if position != len(text):  # (text is not empty: position 0 is short of it)
        raise ValueError(f"invalid duration {value!r} ({ACCEPTED})")
    return _checked(total, value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _scale(number: float, unit: str) -> float:
    # Division by 1000 (not multiplication by 0.001) is correctly rounded, which keeps
    # format_duration -> parse_duration an exact round trip for millisecond values.
    if unit == "ms":
        return number / 1000
    return number * _SECONDS_PER[unit]


def _checked(seconds: float, original: object) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"invalid duration {original!r} (must be a finite number of seconds)")
    if seconds < 0:
        raise ValueError(f"negative duration {original!r} (durations must be >= 0)")
    return seconds


def format_duration(seconds: float) -> str:
    """Render compactly: 0.25 -> "250ms", 1.5 -> "1.5s", 600 -> "10m", 90 -> "1m30s".

    The result always parses back to exactly `seconds`; when no compact form does, it falls
    back to the shortest exact decimal number of seconds.
    """
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}")
    if seconds == 0:
        return "0s"
    *compact, plain = _candidates(float(seconds))
    # `plain` is the shortest decimal that reads back as this float, in seconds: always exact.
    return next((c for c in compact if parse_duration(c) == seconds), plain)


def _candidates(seconds: float) -> list[str]:
    found: list[str] = []
    plain = f"{_number(seconds)}s"
    if seconds < 1:
        millis = f"{_number(seconds * 1000)}ms"
        if _decimals(millis) <= _decimals(plain):
            found.append(millis)
    if seconds >= 60 or seconds.is_integer():
        whole = int(seconds)
        hours, rest = divmod(whole, 3600)
        minutes, secs = divmod(rest, 60)
        fraction = seconds - whole
        parts = [(f"{hours}", "h"), (f"{minutes}", "m"), (_number(secs + fraction), "s")]
        compound = "".join(f"{n}{unit}" for n, unit in parts if n != "0")
        # Splitting off whole minutes can expose float noise ("40.299999952316284s"): then the
        # plain number of seconds is the more readable form.
        if _decimals(compound) <= _decimals(plain):
            found.append(compound)
    found.append(plain)
    return found


def _decimals(text: str) -> int:
    return len(text.partition(".")[2].rstrip("hms"))


def _number(value: float) -> str:
    # Shortest text that reads back as the same float, without exponent notation
    # (the parser accepts plain decimals only).
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
