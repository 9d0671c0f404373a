"""The event stream's fan-out (conveyor.api.events.Hub) on a real SQLite state store: a slow
client is dropped without holding up the others; a client sees only the environments it may
read, and only the one it asked for."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conveyor.api.events import Client, Hub, Message
from conveyor.api.state import Server, Settings
from conveyor.core.access import Binding, Principal, Role


def principal(env: str | None) -> Principal:
    return Principal("vic", (Binding("vic", Role.viewer, env),), None)


def message(n: int, env: str) -> Message:
    return Message(str(n), "step", env, {"id": n, "environment": env})


def test_a_slow_client_is_dropped_and_the_others_get_everything(tmp_path: Path) -> None:
    (tmp_path / "conveyor.toml").write_text('[app]\nname = "shop"\n')
    srv = Server.open(Settings(project_dir=tmp_path, client_queue=3))
    hub = Hub(srv)

    async def run() -> None:
        slow = Client(principal(None), None, asyncio.Queue(3))
        fast = Client(principal(None), None, asyncio.Queue(100))
        staging_only = Client(principal("staging"), None, asyncio.Queue(100))
        filtered = Client(principal(None), "staging", asyncio.Queue(100))
        hub.clients.update({slow, fast, staging_only, filtered})
        got: dict[Client, list[int]] = {fast: [], staging_only: [], filtered: []}
        for n in range(10):
            hub.fan_out(message(n, "staging" if n % 2 else "production"))
            # The fast ones are read as they go; the slow one never is.
            for c, seen in got.items():
                while not c.queue.empty():
                    seen.append(int(c.queue.get_nowait().id))
        assert slow.dropped and slow not in hub.clients and hub.dropped == 1
        assert slow.queue.qsize() == 3  # what it had before it fell behind
        assert got[fast] == list(range(10))
        assert got[staging_only] == [1, 3, 5, 7, 9]  # production: not readable
        assert got[filtered] == [1, 3, 5, 7, 9]  # asked for staging only

    try:
        asyncio.run(run())
    finally:
        srv.close()


def test_message_encoding_is_one_sse_event() -> None:
    text = message(7, "dev").encode()
    assert text == 'id: 7\nevent: step\ndata: {"id": 7, "environment": "dev"}\n\n'
