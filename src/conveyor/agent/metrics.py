"""The agent's admin HTTP endpoint: `/metrics` in Prometheus text format, `/healthz`.

It listens on 127.0.0.1 by default and serves read-only counters. The counters come from the proxy
over its control socket on each scrape, labelled with the version each color runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from typing import TYPE_CHECKING, Any

from conveyor.routers.base import ProxyUnavailable, RouterError

if TYPE_CHECKING:
    from conveyor.engine.engine import Engine

# The proxy's retry reasons (conveyor.proxy.model.RETRY_REASONS; the agent does not import the
# proxy): each is a series from the start, so that rate() sees the first retry.
RETRY_REASONS = ("refused", "reset")


def _labels(**kv: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(stats: dict[str, Any], versions: dict[tuple[str, str], str]) -> str:
    """Render the proxy's stats; `versions` maps (route name, color) to the version it runs."""
    out: list[str] = [
        "# HELP conveyor_proxy_requests_total Requests the proxy routed to a color.",
        "# TYPE conveyor_proxy_requests_total counter",
    ]
    series: list[tuple[dict[str, str], dict[str, Any]]] = []
    for name, route in sorted(stats.get("routes", {}).items()):
        env, _, service = name.partition("/")
        for color, c in sorted(route.get("colors", {}).items()):
            labels = {
                "environment": env,
                "service": service,
                "color": color,
                "version": versions.get((name, color), ""),
            }
            series.append((labels, c))
    for labels, c in series:
        out.append(f"conveyor_proxy_requests_total{_labels(**labels)} {c.get('requests', 0)}")
    out += [
        "# HELP conveyor_proxy_responses_total Responses by status class.",
        "# TYPE conveyor_proxy_responses_total counter",
    ]
    for labels, c in series:
        for klass, n in sorted(c.get("responses", {}).items()):
            out.append(f"conveyor_proxy_responses_total{_labels(**labels, code=klass)} {n}")
    out += [
        "# HELP conveyor_proxy_upstream_errors_total Requests answered 502/504 by the proxy, cut "
        "off mid-response, or failed unanswered and retried on the standby color.",
        "# TYPE conveyor_proxy_upstream_errors_total counter",
    ]
    for labels, c in series:
        out.append(
            f"conveyor_proxy_upstream_errors_total{_labels(**labels)} {c.get('upstream_errors', 0)}"
        )
    out += [
        "# HELP conveyor_proxy_retries_total Requests this color failed without a byte of answer "
        "that the standby color took instead, by reason (refused: the connect failed; reset: "
        "the connection was reset or closed).",
        "# TYPE conveyor_proxy_retries_total counter",
    ]
    for labels, c in series:
        retries = c.get("retries") or {}
        for reason in RETRY_REASONS:
            n = retries.get(reason, 0)
            out.append(f"conveyor_proxy_retries_total{_labels(**labels, reason=reason)} {n}")
    out += [
        "# HELP conveyor_proxy_inflight Requests in flight.",
        "# TYPE conveyor_proxy_inflight gauge",
    ]
    for labels, c in series:
        out.append(f"conveyor_proxy_inflight{_labels(**labels)} {c.get('inflight', 0)}")
    out += [
        "# HELP conveyor_proxy_request_duration_seconds Time to the upstream's response head.",
        "# TYPE conveyor_proxy_request_duration_seconds histogram",
    ]
    for labels, c in series:
        count = 0
        for le, n in c.get("latency_buckets", []):
            le_text = "+Inf" if le == "+Inf" else f"{float(le):g}"
            out.append(
                f"conveyor_proxy_request_duration_seconds_bucket{_labels(**labels, le=le_text)} {n}"
            )
            count = int(n)
        out.append(
            f"conveyor_proxy_request_duration_seconds_sum{_labels(**labels)} "
            f"{float(c.get('latency_sum', 0.0)):.6f}"
        )
        out.append(f"conveyor_proxy_request_duration_seconds_count{_labels(**labels)} {count}")
    return "\n".join(out) + "\n"


class AdminServer:
    def __init__(self, engine: Engine, host: str, port: int, token: str | None = None) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        # With a token, /metrics wants `Authorization: Bearer <token>` (Prometheus: bearer_token_file).
        self._auth = f"Bearer {token}".encode() if token else None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            parts = head.split(b" ", 2)
            method, path = parts[0], parts[1] if len(parts) > 1 else b"/"
            if method != b"GET":
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path.split(b"?")[0] == b"/metrics" and not self._authorized(head):
                status, body, ctype = "401 Unauthorized", b"bearer token required\n", "text/plain"
            elif path.split(b"?")[0] == b"/metrics":
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = (await self.metrics()).encode()
            elif path == b"/healthz":
                status, body, ctype = "200 OK", b"ok\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    def _authorized(self, head: bytes) -> bool:
        if self._auth is None:
            return True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                return hmac.compare_digest(value.strip(), self._auth)
        return False

    async def metrics(self) -> str:
        ctx = self.engine.ctx
        try:
            counters = await ctx.traffic.counters()
        except (RouterError, ProxyUnavailable, OSError):
            counters = {}
        stats = {"routes": {route: {"colors": colors} for route, colors in counters.items()}}
        versions: dict[tuple[str, str], str] = {}
        with contextlib.suppress(Exception):
            for row in ctx.store.instances(ctx.project.app):
                versions[(f"{row.environment}/{row.service}", row.color)] = row.version
        return render(stats, versions)
