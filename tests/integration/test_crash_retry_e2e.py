"""A release that dies whole costs no request while its standby lives (issue 8).

Through the real CLI, agent, proxy and app processes: 16 keep-alive connections of GET traffic,
the new release's process group SIGKILLed during the bake, or after it during the standby window.
The proxy retries on the standby what the dead release failed unanswered (docs/proxy.md, "Retry
on the standby") until the engine has switched back: no failed request, the deploy ends
rolled_back, and a POST the release was answering at the moment of death gets a 502 at once
(never sent twice, never left hanging).

This holds however late the engine notices the death: the retries on the standby, not the speed
of the switch back, are what keep it at zero.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import PGID, Project, wait_for
from conveyor.loadgen import LoadGenerator

# The app under test: every answer in one write, so that a kill never lands between a response's
# head and its body (a response that began cannot be retried by anyone: that case has its own
# test, tests/integration/test_proxy_retry.py). v2 holds `/hold` requests until it dies, and
# says it got one by creating HELD/<method>.
APP = """\
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = json.load(open("demo.json"))["version"]
HELD = {held!r}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.answer()

    def answer(self):
        if self.path == "/hold" and VERSION == "v2":
            open(os.path.join(HELD, self.command), "w").close()
            threading.Event().wait()  # until killed
        body = ("%s %s from %s" % (self.command, self.path, VERSION)).encode()
        head = "HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nX-Demo-Version: %s\\r\\n\\r\\n"
        self.wfile.write((head % (len(body), VERSION)).encode() + body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


Server(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Handler).serve_forever()
"""

BAKE = 'bake = "120s"\non_inconclusive = "wait"'


def held(project: Project) -> Path:
    return project.dir / "held"


def send(project: Project, method: str) -> socket.socket:
    """A `/hold` request through the proxy; its answer is read later, from the socket."""
    sock = socket.create_connection(("127.0.0.1", project.port), timeout=30)
    sock.sendall(f"{method} /hold HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n\r\n".encode())
    return sock


def answer(sock: socket.socket) -> tuple[int, str]:
    """Status and body of the one response on `sock` (bounded: a hang fails the test)."""
    with sock:
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, resp.read().decode()


def phase(project: Project) -> str | None:
    code, status = project.json("status", "--env", "dev")
    assert code == 0, status
    dep = status.get("deployment")
    return dep["phase"] if dep else None


def metrics(project: Project) -> str:
    code, info = project.json("agent", "status")
    assert code == 0 and info["running"], info
    with urllib.request.urlopen(f"{info['admin']}/metrics", timeout=5) as resp:
        return resp.read().decode()  # type: ignore[no-any-return]


@pytest.mark.parametrize("when", ["bake", "standby"])
def test_a_release_that_dies_whole_costs_no_request_while_its_standby_lives(
    project: Project, when: str
) -> None:
    project.configure(rollout=BAKE if when == "bake" else 'bake = "0s"')
    with (project.dir / "conveyor.toml").open("a") as toml:
        # No back-off rounds after a refused connect: they would hide failures from this test
        # when the switch back is quick (they re-read the route, which may be back on v1 by
        # then); here, only the retry on the standby keeps the count at zero.
        toml.write("\n[proxy]\nretries = 0\n")
    held(project).mkdir()
    (project.dir / "app.py").write_text(APP.format(held=str(held(project))))
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    load = LoadGenerator("127.0.0.1", project.port, connections=16, max_seconds=200).start()
    box: dict[str, Any] = {}
    deploy = threading.Thread(target=lambda: box.update(res=project.deploy("v2")), daemon=True)
    try:
        wait_for(lambda: load.snapshot()[0] > 100, what="traffic on v1")
        deploy.start()
        if when == "bake":
            wait_for(lambda: phase(project) == "baking", what="the bake of v2")
        else:  # the deployment succeeded, v1 waits on standby
            deploy.join(240)
            assert box["res"][0] == 0, box["res"]
        wait_for(lambda: load.versions()["v2"] > 100, what="traffic on v2")
        # v2 is answering a GET and a POST when it dies.
        get, post = send(project, "GET"), send(project, "POST")
        wait_for(
            lambda: sorted(os.listdir(held(project))) == ["GET", "POST"],
            what="v2 to hold a GET and a POST",
        )
        [(pgid,)] = project.db(f"SELECT {PGID} FROM instances WHERE version = 'v2'")
        os.killpg(pgid, signal.SIGKILL)
        assert answer(post)[0] == 502  # may have been acted on: never sent twice
        assert answer(get) == (200, "GET /hold from v1")  # retried on the standby
        if when == "bake":
            deploy.join(240)
            code, out = box["res"]
            assert code == 1 and out["outcome"] == "rolled_back", out
        else:  # the supervisor's automatic rollback
            wait_for(
                lambda: project.db("SELECT version, role FROM instances") == [("v1", "active")],
                what="the switch back to v1",
            )
        before = load.versions()["v1"]
        wait_for(lambda: load.versions()["v1"] > before + 100, what="traffic after the rollback")
    finally:
        result = load.stop()
    assert result.failed == 0, (result.statuses, result.error_samples)
    assert result.versions["v1"] > 0 and result.versions["v2"] > 0
    # Counted, by reason, against the color that died (what exactly depends on the timing: a
    # request on a pooled connection is sent again, refused, then retried).
    retried = [
        int(line.rsplit(" ", 1)[1])
        for line in metrics(project).splitlines()
        if line.startswith("conveyor_proxy_retries_total{") and 'color="green"' in line
    ]
    assert len(retried) == 2 and sum(retried) >= 1, retried
