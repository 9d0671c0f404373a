"""Notifier against real HTTP receivers on 127.0.0.1: order, filtering, retries, hangs, formats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import unavailable
from conveyor import __version__
from conveyor.config.models import NotificationConfig
from conveyor.engine.notify import (
    Notice,
    Notifier,
    deliver,
    public_origin,
    summary,
    uses_slack,
)
from conveyor.runtimes import free_port
from conveyor.secrets.redact import Redactor

EVENTS = ["started", "switched", "step", "succeeded", "failed", "rolled_back", "aborted"]
AT = datetime(2024, 5, 17, 9, 30, 5, tzinfo=UTC)


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each request with the next status of `statuses` (then `then`), or never."""

    statuses: list[int] = field(default_factory=list)
    then: int = 200
    hang: bool = False
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/B000/s3cr3t-token?x=1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            line, *rest = head.split("\r\n")
            headers = dict(h.split(": ", 1) for h in rest if h)
            body = await reader.readexactly(int(headers["Content-Length"]))
            self.requests.append(Request(line, headers, body))
            if self.hang:
                await asyncio.Event().wait()
            status = self.statuses.pop(0) if self.statuses else self.then
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def bodies(self) -> list[Any]:
        return [r.json() for r in self.requests]


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        # Hanging handlers would keep wait_closed() waiting; they are cancelled with the loop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1)


def notice(event: str, **changes: Any) -> Notice:
    values: dict[str, Any] = {
        "event": event,
        "app": "shop",
        "environment": "production",
        "version": "v2",
        "deployment_id": 7,
        "reason": f"reason for {event}",
        "measurements": [],
        "at": AT,
        "previous_version": "v1",
    }
    values.update(changes)
    return Notice(**values)


def config(url: str, **changes: Any) -> NotificationConfig:
    return NotificationConfig.model_validate({"url": url, "format": "json", **changes})


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_every_event_once_in_order_with_the_documented_body() -> None:
    async def scenario() -> None:
        async with receiving(Receiver()) as receiver:
            notifier = Notifier([config(receiver.url)])
            measurements = [{"check": "error_rate", "verdict": "pass", "value": 0.0}]
            for event in EVENTS:
                notifier.send(notice(event, measurements=measurements, step=1, weight=10))
            await notifier.aclose(timeout=10)
        assert [b["event"] for b in receiver.bodies()] == EVENTS
        assert receiver.bodies()[0] == {
            "event": "started",
            "app": "shop",
            "environment": "production",
            "version": "v2",
            "previous_version": "v1",
            "deployment": 7,
            "reason": "reason for started",
            "measurements": measurements,
            "step": 1,
            "weight": 10,
            "at": "2024-05-17T09:30:05+00:00",
        }
        first = receiver.requests[0]
        assert first.line == "POST /services/T000/B000/s3cr3t-token?x=1 HTTP/1.1"
        assert first.headers["Content-Type"] == "application/json"
        assert first.headers["User-Agent"] == f"conveyor/{__version__}"
        assert first.headers["Host"] == f"127.0.0.1:{receiver.port}"

    run(scenario)


def test_events_not_in_the_config_are_not_sent() -> None:
    async def scenario() -> None:
        async with receiving(Receiver()) as wanted, receiving(Receiver()) as everything:
            notifier = Notifier(
                [config(wanted.url, events=["succeeded", "failed"]), config(everything.url)]
            )
            for event in EVENTS:
                notifier.send(notice(event))
            await notifier.aclose(timeout=10)
        assert [b["event"] for b in wanted.bodies()] == ["succeeded", "failed"]
        assert [b["event"] for b in everything.bodies()] == EVENTS

    run(scenario)


def test_5xx_is_retried_until_delivered_once() -> None:
    async def scenario() -> None:
        async with receiving(Receiver(statuses=[500, 503])) as receiver:
            notifier = Notifier([config(receiver.url, retries=3)])
            notifier.send(notice("succeeded"))
            notifier.send(notice("switched"))
            await notifier.aclose(timeout=10)
        # Two failures, then the notice is accepted exactly once; the next one follows it.
        events = [b["event"] for b in receiver.bodies()]
        assert events == ["succeeded", "succeeded", "succeeded", "switched"]

    run(scenario)


def test_retries_are_bounded_and_the_warning_hides_the_secret_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with receiving(Receiver(then=500)) as receiver:
            notifier = Notifier([config(receiver.url, retries=2)])
            notifier.send(notice("failed"))
            await notifier.aclose(timeout=10)
        assert len(receiver.requests) == 3
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            f"notification 'failed' to http://127.0.0.1:{receiver.port} failed after 3 attempts: HTTP 500"
        ]

    with caplog.at_level(logging.WARNING, logger="conveyor.notify"):
        run(scenario)
    assert "s3cr3t" not in caplog.text


def test_429_is_retried_but_404_is_final(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with (
            receiving(Receiver(statuses=[429])) as busy,
            receiving(Receiver(then=404)) as missing,
        ):
            notifier = Notifier([config(busy.url), config(missing.url, retries=5)])
            notifier.send(notice("started"))
            await notifier.aclose(timeout=10)
        assert len(busy.requests) == 2
        assert len(missing.requests) == 1

    with caplog.at_level(logging.WARNING, logger="conveyor.notify"):
        run(scenario)
    assert "failed after 1 attempt: HTTP 404" in caplog.text


def test_connection_refused_is_retried_then_given_up(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"

    async def scenario() -> None:
        notifier = Notifier([config(url, retries=1)])
        notifier.send(notice("aborted"))
        await notifier.aclose(timeout=10)

    with caplog.at_level(logging.WARNING, logger="conveyor.notify"):
        run(scenario)
    assert "failed after 2 attempts: connection failed" in caplog.text


def test_a_hanging_webhook_blocks_neither_send_nor_other_webhooks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with (
            receiving(Receiver(hang=True)) as stuck,
            receiving(Receiver()) as healthy,
        ):
            notifier = Notifier([config(stuck.url, timeout=120), config(healthy.url)])
            begun = time.monotonic()
            for event in EVENTS:
                notifier.send(notice(event))
            # send() only queues: had it waited on the stuck webhook, that would take its 120s
            # timeout. The bound is that, with room for a loaded machine; not a measurement.
            assert time.monotonic() - begun < 30
            await until(lambda: len(healthy.requests) == len(EVENTS))
            # The stuck webhook got its first request and is still holding it.
            await until(lambda: len(stuck.requests) == 1)
            closing = time.monotonic()
            await notifier.aclose(timeout=0.3)
            assert time.monotonic() - closing < 30  # not the stuck webhook's 120s
        assert [b["event"] for b in healthy.bodies()] == EVENTS

    with caplog.at_level(logging.WARNING, logger="conveyor.notify"):
        run(scenario)
    assert f"{len(EVENTS)} notifications not delivered at shutdown" in caplog.text


def test_slack_format() -> None:
    async def scenario() -> None:
        async with receiving(Receiver()) as receiver:
            notifier = Notifier([config(receiver.url, format="slack")])
            measurements = [
                {"check": "error_rate", "verdict": "fail", "value": 0.25, "detail": "25 of 100"},
                {"check": "latency_p99_ms", "verdict": "pass", "value": 120.0, "detail": ""},
            ]
            notifier.send(
                notice("rolled_back", reason="error_rate 0.25 > 0.01", measurements=measurements)
            )
            await notifier.aclose(timeout=10)
        (body,) = receiver.bodies()
        assert set(body) == {"text", "blocks"}
        assert body["text"] == "⏪ shop v2 rolled back to v1 in production"
        texts = [b["text"]["text"] for b in body["blocks"] if b["type"] == "section"]
        assert texts[0] == body["text"]
        assert texts[1] == "*Reason:* error_rate 0.25 &gt; 0.01"
        assert texts[2] == (
            "*Measurements:*\n• error_rate: 0.25 (fail) 25 of 100\n• latency_p99_ms: 120 (pass)"
        )
        context = body["blocks"][-1]
        assert context["type"] == "context"
        assert "deployment #7" in context["elements"][0]["text"]

    run(scenario)


def test_every_event_has_its_own_emoji() -> None:
    firsts = {summary(notice(event)).split(" ", 1)[0] for event in EVENTS}
    assert len(firsts) == len(EVENTS)


def test_auto_format_is_slack_only_for_slack_hosts() -> None:
    # Pure decisions: nothing is sent anywhere.
    slack = NotificationConfig.model_validate({"url": "https://hooks.slack.com/services/T/B/x"})
    other = NotificationConfig.model_validate({"url": "https://example.invalid/hook"})
    forced = NotificationConfig.model_validate({"url": other.url, "format": "slack"})
    as_json = NotificationConfig.model_validate({"url": slack.url, "format": "json"})
    assert [uses_slack(c) for c in (slack, other, forced, as_json)] == [True, False, True, False]


def test_public_origin_drops_credentials_path_and_query() -> None:
    assert public_origin("https://hooks.slack.com/services/T/B/secret") == "https://hooks.slack.com"
    assert public_origin("http://user:pw@127.0.0.1:8080/x?token=1") == "http://127.0.0.1:8080"


def test_send_never_raises_and_is_dropped_after_close(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier([config("http://127.0.0.1:9/hook")])
    # No running loop: logged, not raised.
    notifier.send(notice("started"))

    async def scenario() -> None:
        await notifier.aclose()
        notifier.send(notice("started"))

    with caplog.at_level(logging.WARNING, logger="conveyor.notify"):
        run(scenario)
    assert "notification 'started' dropped: no running event loop" in caplog.text
    assert "dropped: the notifier is closed" in caplog.text


def test_https_verifies_the_certificate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A self-signed certificate for 127.0.0.1: the TLS handshake happens (the https path is
    # used) and is refused, because the default context trusts only real authorities.
    if shutil.which("openssl") is None:
        unavailable("the openssl command is missing (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)

    async def scenario() -> None:
        receiver = Receiver()
        server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0, ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
        try:
            notifier = Notifier([config(f"https://127.0.0.1:{port}/hook", retries=0)])
            notifier.send(notice("started"))
            await notifier.aclose(timeout=10)
        finally:
            server.close()
        assert receiver.requests == []

    with caplog.at_level(logging.WARNING, logger="conveyor.notify"):
        run(scenario)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_known_secret_values_are_redacted_from_the_payload() -> None:
    async def scenario() -> None:
        async with receiving(Receiver()) as receiver:
            value = "hunter2-but-longer"
            redactor = Redactor({"DB_PASSWORD": value})
            shown = notice("failed", reason=f"hook said {value}")
            assert await deliver(config(receiver.url), shown, redactor)
            body = receiver.requests[0].body
            assert value not in body.decode()
            assert json.loads(body)["reason"] == "hook said [secret:DB_PASSWORD]"

    run(scenario)
