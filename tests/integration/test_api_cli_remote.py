"""The CLI against a remote conveyor (`--server`, the token in a 0600 file): deploy with live
progress, status, history, promote and abort of a canary, rollback, approve, audit — run from a
directory without any conveyor.toml, through a real `conveyor serve`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from apikit import serve, token

from conftest import Project, wait_for
from conveyor.runtimes.local import free_port

CANARY = """strategy = "canary"
bake = "0s"
steps = [{ weight = 30, pause = "manual" }, { weight = 100 }]
"""

PRODUCTION = """
[environments.production]
approvals = 1

[environments.production.services.web]
port = {port}
"""


class Elsewhere:
    """A directory with no project, and the environment a CI job would give the CLI."""

    def __init__(self, url: str, tok: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cvremote", dir="/tmp"))
        self.token_file = self.dir / "token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(tok + "\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        self.env["CONVEYOR_TOKEN_FILE"] = str(self.token_file)
        self.url = url

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor", "--server", self.url, *args],
            env=self.env,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=240,
            stdin=subprocess.DEVNULL,
        )

    def json(self, *args: str) -> tuple[int, Any]:
        proc = self.run(*args, "--json")
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else proc.stderr


def test_cli_commands_through_a_remote_server(project: Project) -> None:
    project.configure(rollout=CANARY, extra=PRODUCTION.format(port=free_port()))
    project.release("v1")
    project.release("v2")
    _, dan_tok = token(project, "dan", "deployer")
    _, amy_tok = token(project, "amy", "approver")
    _, ann_tok = token(project, "ann", "admin")
    with serve(project) as served:
        dan = Elsewhere(served.url, dan_tok)
        try:
            # The token file must be the user's alone.
            dan.token_file.chmod(0o644)
            proc = dan.run("status", "--env", "dev")
            assert proc.returncode == 2 and "chmod 600" in proc.stderr
            dan.token_file.chmod(0o600)

            proc = dan.run("deploy", "v1", "--env", "dev")
            assert proc.returncode == 0, proc.stderr
            assert "v1 is live in dev" in proc.stdout
            assert "healthy" in proc.stdout  # the progress, from the event stream
            assert project.serving() == "v1"
            code, status = dan.json("status", "--env", "dev")
            assert code == 0 and status["services"][0]["active"]["version"] == "v1"

            # A canary: promoted from afar; the next one aborted.
            deploy = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "conveyor",
                    "--server",
                    served.url,
                    "deploy",
                    "v2",
                    "--env",
                    "dev",
                    "--json",
                ],
                env=dan.env,
                cwd=dan.dir,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for(
                lambda: (
                    (s := dan.json("status", "--env", "dev")[1])
                    and (s.get("deployment") or {}).get("weight") == 30
                ),
                what="the canary at 30%",
            )
            code, out = dan.json("promote", "--env", "dev", "--full")
            assert code == 0, out
            stdout, stderr = deploy.communicate(timeout=240)
            assert deploy.returncode == 0, stderr
            assert json.loads(stdout)["outcome"] == "succeeded"
            assert project.serving() == "v2"

            code, hist = dan.json("history", "--env", "dev")
            assert code == 0
            assert [(d["version"], d["outcome"]) for d in hist["deployments"]] == [
                ("v2", "succeeded"),
                ("v1", "succeeded"),
            ]
            code, out = dan.json("rollback", "--env", "dev")
            assert code == 0, out
            assert out["version"] == "v1" and project.serving() == "v1"
            code, out = dan.json("abort", "--env", "dev")
            assert code == 1 and "nothing to abort" in out["error"]

            # Production needs an approval: the deploy waits, amy approves, dan deploys.
            code, out = dan.json("deploy", "v1", "--env", "production")
            assert code == 1 and "waits for approval" in out["error"]
            amy = Elsewhere(served.url, amy_tok)
            try:
                proc = amy.run("approve", "v1", "--env", "production", "--comment", "ok")
                assert proc.returncode == 0, proc.stderr
                assert "amy approved v1 for production" in proc.stdout
            finally:
                shutil.rmtree(amy.dir, ignore_errors=True)
            code, out = dan.json("deploy", "v1", "--env", "production")
            assert code == 0 and out["outcome"] == "succeeded", out

            ann = Elsewhere(served.url, ann_tok)
            try:
                code, audit = ann.json("audit", "--env", "production")
                assert code == 0
                assert ("amy", "approve", "ok") in {
                    (e["actor"], e["action"], e["outcome"]) for e in audit["entries"]
                }
            finally:
                shutil.rmtree(ann.dir, ignore_errors=True)
        finally:
            shutil.rmtree(dan.dir, ignore_errors=True)
