"""Webhook notifications about deployments: JSON or Slack, delivered in the background.

A rollout must never wait on, or fail because of, somebody's chat server. So `send()` only
puts the notice on a queue; each configured webhook has its own queue and worker task, which
delivers in order, retries transient failures with exponential back-off, and gives up with
one warning line. Webhook URLs often embed a secret (Slack's do, in the path), so nothing
logged ever shows more of a URL than scheme://host[:port].

HTTP is done with plain asyncio streams (and the default TLS context for https): a POST with
`Connection: close` needs nothing more, and the notifier runs on the agent's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from conveyor import __version__
from conveyor.config.models import NotificationConfig
from conveyor.secrets.base import SecretError
from conveyor.secrets.redact import Redactor

log = logging.getLogger("conveyor.notify")

# Delay before retry n (0-based) is BACKOFF_BASE * 2**n: 0.2s, 0.4s, 0.8s, ...
BACKOFF_BASE = 0.2
# Notices waiting per webhook. A dead webhook takes (retries + 1) * timeout per notice, so
# the queue is bounded; beyond it new notices are dropped (with a warning) rather than
# growing memory for the life of the agent.
QUEUE_LIMIT = 100
MAX_HEAD = 65536
# Slack refuses section texts over 3000 characters.
SLACK_TEXT_LIMIT = 3000

EMOJI = {
    "started": "🚀",
    "switched": "🔀",
    "step": "📶",
    "succeeded": "✅",
    "failed": "❌",
    "rolled_back": "⏪",
    "aborted": "🛑",
    "crash_loop": "🔁",
    "break_glass": "🔓",
}


@dataclass(frozen=True)
class Notice:
    event: str
    app: str
    environment: str
    version: str
    deployment_id: int
    reason: str
    measurements: list[dict[str, Any]]
    at: datetime
    previous_version: str | None = None
    step: int | None = None
    weight: int | None = None


def _iso(at: datetime) -> str:
    # The engine passes aware UTC datetimes; a naive one is taken to be UTC as well.
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).isoformat()


def json_body(notice: Notice) -> dict[str, Any]:
    return {
        "event": notice.event,
        "app": notice.app,
        "environment": notice.environment,
        "version": notice.version,
        "previous_version": notice.previous_version,
        "deployment": notice.deployment_id,
        "reason": notice.reason,
        "measurements": notice.measurements,
        "step": notice.step,
        "weight": notice.weight,
        "at": _iso(notice.at),
    }


def summary(notice: Notice) -> str:
    """One line for humans, e.g. "✅ shop v2 deployed to production"."""
    who = f"{notice.app} {notice.version}"
    env = notice.environment
    match notice.event:
        case "started":
            previous = f" (from {notice.previous_version})" if notice.previous_version else ""
            text = f"{who} deploying to {env}{previous}"
        case "switched":
            text = f"{who} now serving {env}"
        case "step":
            weight = f"{notice.weight}%" if notice.weight is not None else "the next step"
            step = f" (step {notice.step})" if notice.step is not None else ""
            text = f"{who} canary at {weight} of {env}{step}"
        case "succeeded":
            text = f"{who} deployed to {env}"
        case "failed":
            text = f"{who} failed to deploy to {env}"
        case "rolled_back":
            back = f" to {notice.previous_version}" if notice.previous_version else ""
            text = f"{who} rolled back{back} in {env}"
        case "aborted":
            text = f"{who} deployment to {env} aborted"
        case "crash_loop":
            text = f"{who} is crash-looping in {env}"
        case "break_glass":  # conveyor.secrets.breakglass: the reason says who read what
            text = f"break-glass read of a secret of {notice.app} in {env}"
        case _:
            text = f"{who} {notice.event} in {env}"
    return f"{EMOJI.get(notice.event, 'ℹ️')} {text}"  # noqa: RUF001 - the information emoji


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str) -> str:
    return text if len(text) <= SLACK_TEXT_LIMIT else text[: SLACK_TEXT_LIMIT - 1] + "…"


def _measurement_line(m: Mapping[str, Any]) -> str:
    # Measurements come from conveyor.core.analysis.Measurement (check, verdict, value, detail);
    # anything else is shown as its JSON.
    if "check" not in m:
        return json.dumps(m, default=str, ensure_ascii=False)
    value = m.get("value")
    shown = "n/a" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    line = f"{m['check']}: {shown}"
    if m.get("verdict"):
        line += f" ({m['verdict']})"
    if m.get("detail"):
        line += f" {m['detail']}"
    return line


def slack_body(notice: Notice) -> dict[str, Any]:
    text = summary(notice)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_slack_escape(text))}}
    ]
    if notice.reason:
        reason = f"*Reason:* {_slack_escape(notice.reason)}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(reason)}})
    if notice.measurements:
        lines = "\n".join(f"• {_slack_escape(_measurement_line(m))}" for m in notice.measurements)
        measured = f"*Measurements:*\n{lines}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(measured)}})
    context = f"deployment #{notice.deployment_id} · {_iso(notice.at)}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": _slack_escape(text), "blocks": blocks}


def uses_slack(config: NotificationConfig) -> bool:
    if config.format == "auto":
        return (urlsplit(config.url).hostname or "").lower() == "hooks.slack.com"
    return config.format == "slack"


def public_origin(url: str) -> str:
    """scheme://host[:port] of `url`: the only part that may be logged."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class DeliveryError(Exception):
    """One failed attempt; `retry` says whether trying again may help."""

    def __init__(self, detail: str, *, retry: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry = retry


@dataclass(frozen=True)
class _Target:
    https: bool
    host: str
    port: int
    path: str  # path and query
    host_header: str
    authorization: str | None


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError("not an http(s) URL", retry=False)
    https = parts.scheme == "https"
    try:
        explicit = parts.port
    except ValueError:
        raise DeliveryError("invalid port", retry=False) from None
    port = explicit if explicit is not None else (443 if https else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if explicit is None else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return _Target(https, host, port, path, host_header, authorization)


async def _read_status(reader: asyncio.StreamReader) -> int:
    """Status of the final response (1xx interim responses are skipped); the body is unused."""
    while True:
        status_line = await reader.readline()
        if not status_line:
            raise DeliveryError("connection closed without a response", retry=True)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise DeliveryError("invalid response", retry=True)
        status = int(parts[1])
        seen = len(status_line)
        while True:
            line = await reader.readline()
            seen += len(line)
            if line in (b"\r\n", b"\n", b""):
                break
            if seen > MAX_HEAD:
                raise DeliveryError("response head too large", retry=True)
        if status >= 200:
            return status


async def post_json(url: str, body: bytes) -> int:
    """POST `body` to `url` once; the HTTP status, or DeliveryError for network trouble."""
    target = _target(url)
    tls = ssl.create_default_context() if target.https else None
    try:
        reader, writer = await asyncio.open_connection(
            target.host,
            target.port,
            ssl=tls,
            server_hostname=target.host if tls else None,
        )
    except OSError as e:
        raise DeliveryError(f"connection failed: {e.strerror or e}", retry=True) from None
    try:
        head = (
            f"POST {target.path} HTTP/1.1\r\n"
            f"Host: {target.host_header}\r\n"
            f"User-Agent: conveyor/{__version__}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Accept: */*\r\n"
            "Connection: close\r\n"
        )
        if target.authorization:
            head += f"Authorization: {target.authorization}\r\n"
        writer.write(head.encode("latin-1") + b"\r\n" + body)
        await writer.drain()
        return await _read_status(reader)
    except (OSError, asyncio.IncompleteReadError) as e:
        raise DeliveryError(f"connection failed: {e}", retry=True) from None
    except (ValueError, asyncio.LimitOverrunError):
        # readline() raises ValueError for a line longer than the stream limit.
        raise DeliveryError("invalid response", retry=True) from None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def url_secret(config: NotificationConfig) -> str | None:
    """The secret that holds this webhook's URL (`url_secret`), if it is kept in the store."""
    return config.url_secret or None


def where(config: NotificationConfig) -> str:
    """How logs name a webhook: scheme://host[:port], or the secret its URL is kept in."""
    name = url_secret(config)
    return f"the webhook in secret {name}" if name else public_origin(config.url or "")


async def _attempt(config: NotificationConfig, body: bytes, url: str) -> None:
    try:
        status = await asyncio.wait_for(post_json(url, body), config.timeout)
    except TimeoutError:
        raise DeliveryError(f"timed out after {config.timeout:g}s", retry=True) from None
    if 200 <= status < 300:
        return
    raise DeliveryError(f"HTTP {status}", retry=status >= 500 or status == 429)


async def deliver(
    config: NotificationConfig,
    notice: Notice,
    redactor: Redactor | None = None,
    url: str | None = None,
) -> bool:
    """Deliver one notice with retries; True when the webhook accepted it. Never raises.

    `url`: the webhook's URL when it is kept as a secret (config.url otherwise). Every known
    secret value in the payload is replaced with `[secret:NAME]`.
    """
    payload = slack_body(notice) if uses_slack(config) else json_body(notice)
    if redactor:
        payload = redactor.data(payload)
    body = json.dumps(payload, default=str, ensure_ascii=False).encode()
    target = url if url is not None else config.url
    attempts = 0
    while True:
        attempts += 1
        try:
            await _attempt(config, body, target)
            return True
        except DeliveryError as e:
            if not e.retry or attempts > config.retries:
                log.warning(
                    "notification %r to %s failed after %d attempt%s: %s",
                    notice.event,
                    where(config),
                    attempts,
                    "" if attempts == 1 else "s",
                    e.detail,
                )
                return False
        await asyncio.sleep(BACKOFF_BASE * 2 ** (attempts - 1))


@dataclass
class _Channel:
    """The queue and worker of one webhook, bound to the loop they were created on."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Notice] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    worker: asyncio.Task[None] | None = None
    busy: bool = False  # a notice has been taken off the queue and is being delivered


# A webhook URL kept as a secret, resolved when a notice is sent (never logged).
SecretURL = Callable[[str], Awaitable[str]]


class Notifier:
    def __init__(
        self,
        configs: list[NotificationConfig],
        redactor: Redactor | None = None,
        secret_url: SecretURL | None = None,
    ) -> None:
        self._configs = list(configs)
        self._redactor = redactor
        self._secret_url = secret_url
        # Keyed by position: two entries may share a URL with different events or formats.
        self._channels: dict[int, _Channel] = {}
        self._closed = False

    def send(self, notice: Notice) -> None:
        """Queue `notice` for every webhook that wants its event. Never blocks, never raises."""
        try:
            self._send(notice)
        except Exception:
            # A notification is never worth failing a rollout for.
            log.exception("could not queue notification %r", notice.event)

    def _send(self, notice: Notice) -> None:
        if self._closed:
            log.warning("notification %r dropped: the notifier is closed", notice.event)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning("notification %r dropped: no running event loop", notice.event)
            return
        for index, config in enumerate(self._configs):
            if notice.event not in config.events:
                continue
            channel = self._channel(index, config, loop)
            try:
                channel.queue.put_nowait(notice)
            except asyncio.QueueFull:
                log.warning(
                    "notification %r to %s dropped: %d already waiting",
                    notice.event,
                    where(config),
                    QUEUE_LIMIT,
                )

    def _channel(
        self, index: int, config: NotificationConfig, loop: asyncio.AbstractEventLoop
    ) -> _Channel:
        channel = self._channels.get(index)
        # A channel from another (finished) loop is useless: its worker will never run again.
        if channel is None or channel.loop is not loop:
            channel = _Channel(loop)
            channel.worker = loop.create_task(self._work(config, channel))
            self._channels[index] = channel
        return channel

    async def _work(self, config: NotificationConfig, channel: _Channel) -> None:
        while True:
            notice = await channel.queue.get()
            channel.busy = True
            try:
                url = await self._url(config)
                if url is not None:
                    await deliver(config, notice, self._redactor, url)
            except Exception:
                log.exception("notification %r to %s failed", notice.event, where(config))
            finally:
                channel.busy = False
                channel.queue.task_done()

    async def _url(self, config: NotificationConfig) -> str | None:
        name = url_secret(config)
        if name is None:
            return config.url
        if self._secret_url is None:
            log.warning(
                "notification to %s not sent: its secret cannot be read here", where(config)
            )
            return None
        try:
            return await self._secret_url(name)
        except SecretError as exc:
            log.warning("notification to %s not sent: %s", where(config), exc)
            return None

    async def aclose(self, timeout: float = 5.0) -> None:
        """Let what is queued be delivered, for at most `timeout` seconds, then stop."""
        self._closed = True
        loop = asyncio.get_running_loop()
        channels = [c for c in self._channels.values() if c.loop is loop]
        self._channels.clear()
        if channels:
            drained = asyncio.gather(*(c.queue.join() for c in channels))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained, timeout)
        left = sum(c.queue.qsize() + c.busy for c in channels)
        workers = [c.worker for c in channels if c.worker is not None]
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if left:
            log.warning(
                "%d notification%s not delivered at shutdown", left, "" if left == 1 else "s"
            )
