"""The API's actions: the same agent requests the CLI sends, on the same socket.

The server never runs a deployment itself. A deploy or a rollback runs in the agent for as long
as it takes; the HTTP request is answered as soon as the agent names the deployment (its first
progress event), while a thread of the server stays on the agent's socket until the result.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from conveyor.agent.client import AgentUnavailable
from conveyor.api.state import Server


@dataclass(frozen=True)
class Started:
    """What an agent request said first: the deployment it runs, or its result (it ended, or
    was refused, before naming one). Both None: the wait timed out."""

    deployment_id: int | None
    result: dict[str, Any] | None


def _unavailable(srv: Server, exc: Exception) -> dict[str, Any]:
    return {
        "ok": False,
        "exit": 1,
        "error": f"cannot reach the conveyor agent: {exc}; see {srv.paths.agent_log}",
    }


def call(srv: Server, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """One agent request, waited for to the end (promote, abort, status: quick ones)."""
    client = srv.agent()
    try:
        client.ensure()
        return client.request(request, timeout=timeout)
    except (AgentUnavailable, OSError) as exc:
        return _unavailable(srv, exc)


def start(srv: Server, request: dict[str, Any], timeout: float) -> Started:
    """Send `request` from a background thread; return once the agent names the deployment or
    answers (blocking: call it from a worker thread)."""
    named = threading.Event()
    box: dict[str, Any] = {}

    def progress(event: dict[str, Any]) -> None:
        if isinstance(event.get("deployment"), int) and "deployment" not in box:
            box["deployment"] = event["deployment"]
            named.set()

    def work() -> None:
        client = srv.agent()
        try:
            client.ensure()
            box["result"] = client.request(request, on_progress=progress)
        except (AgentUnavailable, OSError) as exc:
            box["result"] = _unavailable(srv, exc)
        finally:
            named.set()

    # A daemon thread: when the server stops, the agent goes on with the deployment regardless.
    threading.Thread(target=work, name=f"agent-{request['op']}", daemon=True).start()
    named.wait(timeout)
    deployment = box.get("deployment")
    if deployment is not None:
        return Started(int(deployment), None)
    result = box.get("result")
    if isinstance(result, dict):
        data = result.get("data") or {}
        found = data.get("deployment")
        return Started(found if isinstance(found, int) else None, result)
    return Started(None, None)
