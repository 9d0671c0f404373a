"""`conveyor secrets` through the real entry point: values in on stdin, out only from `get` and
`export`, every change and read audited without its value, break-glass for admins."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import Project

VALUE = "postgres://shop:Tr0ub4dor&3-horse@127.0.0.1/shop"  # conveyor:allow-secret because a made-up value the test plants


@pytest.fixture
def proj(project: Project, tmp_path: Path) -> Project:
    project.env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    project.env["CONVEYOR_USER"] = "alice"
    for key in ("CONVEYOR_MASTER_KEY", "CONVEYOR_MASTER_PASSPHRASE"):
        project.env.pop(key, None)
    return project


def run(project: Project, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "secrets", *args],
        env=project.env,
        cwd=project.dir,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin if stdin is not None else "",
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


@pytest.mark.both_databases
def test_set_get_rotate_list_history_rm(proj: Project, tmp_path: Path) -> None:
    proj.configure(extra='[environments.dev.services.web]\nsecrets = ["DATABASE_URL"]\n')
    outputs: list[str] = []

    def quiet(*args: str, stdin: str | None = None, code: int = 0) -> Any:
        proc = run(proj, *args, stdin=stdin)
        assert proc.returncode == code, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
        return proc

    proc = quiet("set", "DATABASE_URL", "--env", "dev", stdin=VALUE + "\n")
    assert "set DATABASE_URL for dev: version 1" in proc.stdout
    keys = tmp_path / "config" / "conveyor" / "keys"
    [key_file] = keys.iterdir()
    assert f"created the master key of shop's secrets: {key_file}" in proc.stderr
    assert quiet("set", "DATABASE_URL", "--env", "dev", stdin="x\n").stderr == ""  # said once

    got = run(proj, "get", "DATABASE_URL", "--env", "dev", "--version", "1")
    assert (got.returncode, got.stdout) == (0, VALUE + "\n"), got.stderr
    source = tmp_path / "value.txt"
    source.write_text(VALUE + "-from-file")
    quiet("set", "DATABASE_URL", "--env", "dev", "--from-file", str(source))
    proc = quiet("rotate", "DATABASE_URL", "--env", "dev", "--generate", "32", "--json")
    assert as_json(proc)["secrets"][0]["version"] == 4
    got = run(proj, "get", "DATABASE_URL", "--env", "dev", "--json")
    fetched = as_json(got)
    assert (fetched["provider"], fetched["version"], len(fetched["value"])) == ("local", "4", 43)
    assert fetched["value"] not in proc.stdout

    listed = as_json(quiet("list", "--env", "dev", "--json"))["secrets"]
    assert [(s["name"], s["version"], s["by"], s["removed"]) for s in listed] == [
        ("DATABASE_URL", 4, "alice", False)
    ]
    history = as_json(quiet("history", "DATABASE_URL", "--env", "dev", "--json"))["versions"]
    assert [v["action"] for v in history] == ["set", "set", "set", "rotate"]
    doctor = quiet("doctor", "--env", "dev")
    assert "✓ DATABASE_URL: local version 4" in doctor.stdout

    assert "needs --yes" in quiet("rm", "DATABASE_URL", "--env", "dev", code=2).stderr
    quiet("rm", "DATABASE_URL", "--env", "dev", "--yes")
    gone = run(proj, "get", "DATABASE_URL", "--env", "dev")
    assert gone.returncode == 1 and "DATABASE_URL for dev: local: not found" in gone.stderr
    assert quiet("doctor", "--env", "dev", code=1).stdout.count("✗ DATABASE_URL") == 1
    assert as_json(quiet("list", "--env", "dev", "--json"))["secrets"][0]["removed"] is True

    audit = proj.cli("audit", "--json")
    actions = [e["action"] for e in json.loads(audit.stdout)["entries"]]
    assert actions.count("secret.set") == 3 and "secret.rotate" in actions
    assert actions.count("secret.get") == 3 and "secret.rm" in actions
    assert "secret.doctor" in actions
    # No value anywhere but where it was asked for: not in any other output, the audit log, or
    # the state database.
    for text in [*outputs, audit.stdout]:
        assert VALUE not in text and fetched["value"] not in text
    if proj.database_url is None:
        raw = (proj.home / "state.db").read_bytes()
        assert VALUE.encode() not in raw and fetched["value"].encode() not in raw


def test_bad_input_changes_nothing(proj: Project, tmp_path: Path) -> None:
    proj.configure()
    for args, stdin, message in [
        (("set", "1BAD", "--env", "dev"), "v", "invalid secret name '1BAD'"),
        (("set", "A", "--env", "dev"), "", "the value of A is empty"),
        (("set", "A", "--env", "dev", "--generate", "4"), None, "from 16 to 1024"),
        (("set", "A", "--env", "nope"), "v", "unknown environment 'nope'"),
        (("rotate", "A", "--env", "dev", "--generate", "32"), None, "no secret A in dev"),
        (("rm", "A", "--env", "dev", "--yes"), None, "no secret A in dev"),
        (("export", "--env", "dev", "--format", "json"), None, "only dotenv"),
    ]:
        proc = run(proj, *args, stdin=stdin)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    both = run(proj, "set", "A", "--env", "dev", "--generate", "32", "--from-file", "x")
    assert both.returncode == 2 and "alternatives" in both.stderr
    broken = tmp_path / ".env"
    broken.write_text("GOOD=1\nhunter2\n")
    proc = run(proj, "import", str(broken), "--env", "dev")
    assert proc.returncode == 2 and f"{broken}:2: line 2: expected NAME=value" in proc.stderr
    assert "hunter2" not in proc.stderr
    assert as_json(run(proj, "list", "--env", "dev", "--json"))["secrets"] == []


def test_production_needs_a_reason_and_is_never_exported(proj: Project, tmp_path: Path) -> None:
    proj.configure(extra="\n[environments.production]\n")
    assert run(proj, "set", "STRIPE_KEY", "--env", "production", stdin=VALUE).returncode == 0
    proc = run(proj, "get", "STRIPE_KEY", "--env", "production")
    assert proc.returncode == 2 and "needs --reason" in proc.stderr and VALUE not in proc.stdout
    proc = run(proj, "get", "STRIPE_KEY", "--env", "production", "--reason", "refund bug #12")
    assert proc.stdout == VALUE + "\n"
    proc = run(proj, "export", "--env", "production")
    assert proc.returncode == 2 and "refusing to export the secrets of production" in proc.stderr
    assert proc.stdout == ""

    dotenv = tmp_path / ".env.local"
    dotenv.write_text(f'export DATABASE_URL="{VALUE}"\nDEBUG_TOKEN=abc $x\nEMPTY=\n')
    proc = run(proj, "import", str(dotenv), "--env", "dev", "--json")
    assert [s["name"] for s in as_json(proc)["secrets"]] == ["DATABASE_URL", "DEBUG_TOKEN", "EMPTY"]
    again = as_json(run(proj, "import", str(dotenv), "--env", "dev", "--json"))
    assert again["secrets"] == [] and len(again["unchanged"]) == 3
    exported = run(proj, "export", "--env", "dev")
    assert exported.returncode == 0
    assert exported.stdout == f'DATABASE_URL="{VALUE}"\nDEBUG_TOKEN="abc \\$x"\nEMPTY=""\n'

    entries = json.loads(proj.cli("audit", "--json").stdout)["entries"]
    reads = [e for e in entries if e["action"] == "secret.get"]
    assert [(e["environment"], e["detail"]) for e in reads] == [
        ("production", "get: refund bug #12")
    ]
    assert [e["action"] for e in entries].count("secret.export") == 1
    assert VALUE not in json.dumps(entries)


def test_a_wrong_master_key_is_one_line(proj: Project) -> None:
    proj.configure()
    proj.env["CONVEYOR_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    assert run(proj, "set", "A", "--env", "dev", stdin=VALUE).returncode == 0
    proj.env["CONVEYOR_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    proc = run(proj, "get", "A", "--env", "dev")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "A for dev: local: wrong master key for the secrets of shop" in proc.stderr
    assert "secrets set" not in proc.stderr  # a failure, not a missing secret
    proc = run(proj, "set", "B", "--env", "dev", stdin=VALUE)
    assert proc.returncode == 1 and proc.stderr.startswith("error: wrong master key")


class Hook(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Hook.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Hook)
    Hook.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


MANAGER = """\
import pathlib, sys
here = pathlib.Path(__file__).parent
if (here / "down").exists():
    print("connect: connection refused", file=sys.stderr)
    sys.exit(1)
print((here / "store" / sys.argv[1]).read_text())
"""


def test_break_glass_reads_the_cached_copy_and_tells_the_webhooks(
    proj: Project, tmp_path: Path, webhook: str
) -> None:
    manager = tmp_path / "manager"
    (manager / "store").mkdir(parents=True)
    (manager / "manager.py").write_text(MANAGER)
    (manager / "store" / "STRIPE_KEY").write_text(VALUE)
    proj.configure(
        extra=(
            '[environments.dev.services.web]\nsecrets = ["STRIPE_KEY"]\n'
            "[secrets]\n"
            'providers = ["command", "local"]\n'
            f'command = "{sys.executable} {manager / "manager.py"} {{name}}"\n'
            "[access]\n"
            'admins = ["alice"]\n'
            "[[notifications]]\n"
            f'url = "{webhook}"\n'
            'events = ["break_glass"]\n'
        )
    )
    doctor = run(proj, "doctor", "--env", "dev", "--json")
    assert doctor.returncode == 0, doctor.stdout
    [checked] = as_json(doctor)["secrets"]
    assert (checked["provider"], checked["version"]) == ("command", "current")
    assert VALUE not in doctor.stdout

    (manager / "down").touch()
    down = run(proj, "get", "STRIPE_KEY", "--env", "dev")
    assert down.returncode == 1
    assert "command: " in down.stderr and "connection refused" in down.stderr
    assert "local: not found" in down.stderr

    proj.env["CONVEYOR_USER"] = "bob"
    refused = run(proj, "get", "STRIPE_KEY", "--env", "dev", "--break-glass", "--reason", "x")
    assert (
        refused.returncode == 1 and "for [access] admins (alice); bob is not one" in refused.stderr
    )
    assert refused.stdout == ""
    proj.env["CONVEYOR_USER"] = "alice"
    no_reason = run(proj, "get", "STRIPE_KEY", "--env", "dev", "--break-glass")
    assert no_reason.returncode == 2 and "needs --reason" in no_reason.stderr
    glass = run(
        proj, "get", "STRIPE_KEY", "--env", "dev", "--break-glass", "--reason", "manager outage"
    )
    assert glass.returncode == 0, glass.stderr
    assert glass.stdout == VALUE + "\n"
    assert "cached copy from command" in glass.stderr and "notified" in glass.stderr

    [body] = Hook.bodies
    assert (body["event"], body["environment"]) == ("break_glass", "dev")
    assert body["reason"].startswith("alice read STRIPE_KEY (cached copy from command")
    assert body["reason"].endswith(": manager outage") and VALUE not in json.dumps(body)
    entries = json.loads(proj.cli("audit", "--json").stdout)["entries"]
    glass_entries = [
        (e["actor"], e["outcome"]) for e in entries if e["action"] == "secret.break_glass"
    ]
    assert glass_entries == [("bob", "refused"), ("alice", "ok")]
    assert VALUE not in json.dumps(entries)
