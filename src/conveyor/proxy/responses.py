"""Responses the proxy writes itself (errors), built once at import time."""

from __future__ import annotations

from typing import Final

REASONS: Final[dict[int, bytes]] = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

# b"200" etc. for every status, so the response head needs no formatting per request.
STATUS_BYTES: Final[list[bytes]] = [str(i).encode() for i in range(1000)]


def _build(status: int, keep_alive: bool) -> bytes:
    reason = REASONS[status]
    body = reason + b"\n"
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: %s\r\n\r\n%s"
        % (status, reason, len(body), connection, body)
    )


_CANNED: Final[dict[tuple[int, bool], bytes]] = {
    (status, keep): _build(status, keep) for status in REASONS for keep in (True, False)
}


def canned(status: int, keep_alive: bool) -> bytes:
    return _CANNED[(status, keep_alive)]
