"""Health probes: one HTTP GET (or a TCP connect) per call, results as (ok, detail).

Probes run on the agent's event loop for every instance every interval, so they use plain
asyncio streams, never raise for network trouble, and bound everything by one timeout.
The detail string is shown to people ("HTTP 503", "connection refused"), so it stays short.
"""

from __future__ import annotations

import asyncio
import contextlib

# Enough for any sane status line and headers; a probe never needs the body.
MAX_HEAD = 65536


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _network_detail(err: OSError) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ConnectionResetError):
        return "connection reset"
    return f"connection failed: {err.strerror or err}"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _exchange(host: str, port: int, path: str) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: {_host_header(host, port)}\r\n"
            "User-Agent: conveyor-health\r\n"
            "Accept: */*\r\n"
            "Connection: close\r\n"
            "\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            return False, "connection closed without a response"
        parts = status_line.split(None, 2)
        if (
            len(parts) < 2
            or not parts[0].startswith(b"HTTP/1.")
            or len(parts[1]) != 3
            or not parts[1].isdigit()
        ):
            return False, "invalid response"
        status = int(parts[1])
        # Read the rest of the head so the server is not cut off mid-write; the body is
        # irrelevant to the verdict.
        seen = len(status_line)
        while seen < MAX_HEAD:
            line = await reader.readline()
            seen += len(line)
            if line in (b"\r\n", b"\n", b""):
                break
        return 200 <= status < 300, f"HTTP {status}"
    finally:
        await _close(writer)


async def probe_http(host: str, port: int, path: str, timeout: float) -> tuple[bool, str]:
    """GET `path`; any 2xx passes. Never raises for network errors."""
    try:
        return await asyncio.wait_for(_exchange(host, port, path), timeout)
    except TimeoutError:
        return False, f"timed out after {_format_seconds(timeout)}"
    except OSError as e:
        return False, _network_detail(e)
    except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
        # readline() raises ValueError for a line longer than the stream limit.
        return False, "invalid response"


async def probe_tcp(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """Passes when a TCP connection can be opened (for services without HTTP)."""

    async def connect() -> None:
        _, writer = await asyncio.open_connection(host, port)
        await _close(writer)

    try:
        await asyncio.wait_for(connect(), timeout)
    except TimeoutError:
        return False, f"timed out after {_format_seconds(timeout)}"
    except OSError as e:
        return False, _network_detail(e)
    return True, "connected"
