"""What every metric source shares: the target being measured, the protocol, placeholders."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.core.durations import format_duration

if TYPE_CHECKING:
    from conveyor.config.models import AnalysisCheck
    from conveyor.core.analysis import Measurement


@dataclass(frozen=True)
class Target:
    """The color under analysis: what placeholders expand to and where commands run."""

    app: str
    environment: str
    service: str
    color: str
    version: str
    port: int | None  # the color's own port (not the proxy's)
    cwd: Path  # the release tree
    route: str  # the proxy route, "<environment>/<service>"


class MetricSource(Protocol):
    async def measure(self, check: AnalysisCheck, target: Target, now: float) -> Measurement: ...


class MissingPlaceholder(ValueError):
    """A template uses {port} but the target has no port (a worker)."""


def substitute(template: str, target: Target) -> str:
    """Expand {port} {version} {color} {environment} {service} {app} in `template`.

    Plain replacement rather than str.format: PromQL label matchers and JSON use braces too,
    and `sum(rate(x{version="{version}"}[1m]))` must keep its own.
    """
    values = {
        "version": target.version,
        "color": target.color,
        "environment": target.environment,
        "service": target.service,
        "app": target.app,
    }
    text = template
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    if "{port}" in text:
        if target.port is None:
            raise MissingPlaceholder(f"{{port}} used but {target.service} has no port")
        text = text.replace("{port}", str(target.port))
    return text


def placeholder_env(target: Target) -> dict[str, str]:
    """The same values as environment variables, for commands that prefer them."""
    env = {
        "CONVEYOR_APP": target.app,
        "CONVEYOR_ENV": target.environment,
        "CONVEYOR_SERVICE": target.service,
        "CONVEYOR_COLOR": target.color,
        "CONVEYOR_VERSION": target.version,
    }
    if target.port is not None:
        env["CONVEYOR_PORT"] = str(target.port)
    return env


def json_field(document: Any, path: str) -> tuple[float | None, str]:
    """The number at dotted `path` ("data.error_rate", "items.0.value") in a decoded JSON document.

    Returns (value, "") or (None, why not).
    """
    node = document
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None, f"no field {path!r} in the JSON"
    # bool is an int subclass, but true/false is not a measurement.
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None, f"field {path!r} is not a number: {short(repr(node), 60)}"
    value = float(node)
    if math.isnan(value):
        return None, "no data"
    return value, ""


def seconds(value: float) -> str:
    return format_duration(value)


def short(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters, for details shown to people."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
