"""The real server (create_app under uvicorn, as `conveyor serve` runs it) with one addition for
the dashboard tests: it counts the event streams it is serving right now, so a test can see from
the server's side that a hidden tab closed its stream.

    python tests/integration/dashboard_server.py PORT   (CONVEYOR_PROJECT says which project)

GET /__test/streams answers {"open": N}. Bound to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn

from conveyor.api.app import create_app

EVENTS_PATH = "/api/v1/events"


class CountingStreams:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.open = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/__test/streams":
            body = json.dumps({"open": self.open}).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or scope["path"] != EVENTS_PATH:
            await self.app(scope, receive, send)
            return
        # Counted from the request's arrival until the app is done with it: the app returns when
        # it sees the client go away (or the server shuts down).
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1


def main() -> None:
    port = int(sys.argv[1])
    uvicorn.run(CountingStreams(create_app()), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
