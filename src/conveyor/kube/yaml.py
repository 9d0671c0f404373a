"""Kubernetes objects as YAML documents, without a YAML library (pure).

The objects are plain JSON values; a string that YAML could read as something else (a number,
a boolean, null, a value with ': ' or a leading special character) is written as a JSON string,
which YAML reads as the same string.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./+-]*")
_SPECIAL = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})


def scalar(value: Any) -> str:
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and value.lower() not in _SPECIAL
        return value if plain else json.dumps(value)
    return json.dumps(value)  # numbers, true/false, null


def dump(value: Any, indent: int = 0) -> str:
    """`value` as a YAML block (a mapping or a sequence at the top), ending with a newline."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        out = []
        for key, item in value.items():
            head = f"{pad}{scalar(str(key))}:"
            if isinstance(item, (dict, list)) and item:
                out.append(head + "\n" + dump(item, indent + 2))
            else:
                out.append(f"{head} {_inline(item)}\n")
        return "".join(out)
    if isinstance(value, list):
        if not value:
            return pad + "[]\n"
        out = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                block = dump(item, indent + 2)
                out.append(f"{pad}- {block[indent + 2 :]}")
            else:
                out.append(f"{pad}- {_inline(item)}\n")
        return "".join(out)
    return pad + scalar(value) + "\n"


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return scalar(value)
