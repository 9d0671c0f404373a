"""The agent tells a malformed request (the caller's mistake, exit 2) from a bug (exit 1, logged)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from conveyor.agent.server import Agent, BadRequest, _request
from conveyor.paths import Paths


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"op": "explode"}', "unknown operation 'explode'"),
        (b'{"op": "deploy", "env": "dev"}', "deploy needs 'version' (str)"),
        (b'{"op": "status", "env": 3}', "status needs 'env' (str)"),
    ],
)
def test_malformed_requests_are_bad_requests(line: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        _request(line)


def test_well_formed_requests_pass() -> None:
    assert _request(b'{"op": "deploy", "env": "dev", "version": "v1"}')["op"] == "deploy"
    assert _request(b'{"op": "ping"}') == {"op": "ping"}


async def _ask(agent: Agent, request: dict[str, Any]) -> dict[str, Any]:
    reader = asyncio.StreamReader()
    reader.feed_data(json.dumps(request).encode() + b"\n")
    reader.feed_eof()
    written: list[bytes] = []

    class Writer:
        def write(self, data: bytes) -> None:
            written.append(data)

        async def drain(self) -> None:
            return None

        def close(self) -> None:
            return None

    await agent._serve(reader, Writer())  # type: ignore[arg-type]
    lines = [json.loads(x) for x in b"".join(written).splitlines()]
    result: dict[str, Any] = lines[-1]
    return result


def test_a_key_error_inside_the_engine_is_a_bug_not_a_bad_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = Paths(tmp_path / ".conveyor")
    paths.ensure()
    agent = Agent(tmp_path, paths)

    async def broken(env_name: str) -> dict[str, Any]:
        return {}["no such key"]  # type: ignore[no-any-return]

    agent.engine.status = broken  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.ERROR, logger="conveyor.agent"):
            result = asyncio.run(_ask(agent, {"op": "status", "env": "dev"}))
        assert result["exit"] == 1 and result["ok"] is False
        assert result["error"].startswith("internal error: KeyError('no such key')")
        assert str(paths.agent_log) in result["error"]
        assert any(r.exc_info for r in caplog.records)  # the traceback goes to agent.log

        bad = asyncio.run(_ask(agent, {"op": "status"}))
        assert (bad["exit"], bad["error"]) == (2, "bad request: status needs 'env' (str)")
    finally:
        agent.store.close()
