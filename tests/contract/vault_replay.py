"""A stand-in for Vault in contract tests: a stdlib HTTP server on 127.0.0.1 that replays the
responses in vault_responses/*.json (written from Vault's KV v2 API documentation).

Each file says which request it answers (method, path, query) and with what (status, body).
Like Vault, it answers 403 (permission_denied.json) to a request without the right X-Vault-Token,
and 404 {"errors": []} to anything it has no response for. A path under /v1/hang/ is held open
until the server stops: the provider's timeout must end the call.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

RESPONSES = Path(__file__).parent / "vault_responses"
TOKEN = "hvs.contract-test-token"


@dataclass
class Replay:
    url: str
    # (method, path, query, token, namespace) of every request, in order.
    seen: list[tuple[str, str, dict[str, str], str | None, str | None]] = field(
        default_factory=list
    )


def _load() -> tuple[dict[tuple[str, str, str], dict[str, Any]], dict[str, Any]]:
    routes: dict[tuple[str, str, str], dict[str, Any]] = {}
    denied: dict[str, Any] = {}
    for file in sorted(RESPONSES.glob("*.json")):
        recorded = json.loads(file.read_text())
        request = recorded["request"]
        if request["path"] == "*":
            denied = recorded
            continue
        query = json.dumps(request["query"], sort_keys=True)
        routes[(request["method"], request["path"], query)] = recorded
    return routes, denied


@contextmanager
def vault_replay() -> Iterator[Replay]:
    routes, denied = _load()
    release = threading.Event()
    replay = Replay(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query))
            token = self.headers.get("X-Vault-Token")
            replay.seen.append(
                ("GET", parts.path, query, token, self.headers.get("X-Vault-Namespace"))
            )
            if parts.path.startswith("/v1/hang/"):
                release.wait(30)
                return
            if token != TOKEN:
                self._send(denied["status"], denied["body"])
                return
            recorded = routes.get(("GET", parts.path, json.dumps(query, sort_keys=True)))
            if recorded is None:
                self._send(404, {"errors": []})
                return
            self._send(recorded["status"], recorded["body"])

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    replay.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield replay
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
