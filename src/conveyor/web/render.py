"""Jinja2 for the dashboard: autoescaped templates and the two time filters the pages share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.templating import Jinja2Templates
from starlette.requests import Request
from starlette.responses import Response

from conveyor.web.paths import TEMPLATES_DIR

# Jinja2Templates turns autoescape on for .html: every value a page shows is escaped, including
# the reasons and comments people type.
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def _when(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def age(value: datetime | str | None, now: datetime) -> str:
    """'3m ago': how long ago, in the largest unit that fits."""
    at = _when(value)
    if at is None:
        return ""
    seconds = int((now - at).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def clock(value: datetime | str | None) -> str:
    at = _when(value)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else ""


templates.env.filters["age"] = age
templates.env.filters["clock"] = clock


def now() -> datetime:
    return datetime.now(UTC)


def page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    response: Response = templates.TemplateResponse(
        request, name, {"now": now(), **context}, status_code=status_code
    )
    return response
