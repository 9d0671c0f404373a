"""Secrets in deployments, end to end through the CLI, the agent and real processes.

The secrets live in conveyor's own encrypted store (the `local` provider, for real); the
service (tests/integration/secretapp/app.py) prints them carelessly and answers the SHA-256 of
each over HTTP. What is checked: the value reaches the process, files with as_file are private
and go with their color, a missing secret fails a deploy before traffic moves, a rotation is
picked up by deploying the live release again, a rollback restores the old versions (or keeps
the current ones), and no file conveyor wrote nor anything it printed holds the value.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from conftest import Project, wait_for

APP = Path(__file__).parent / "secretapp" / "app.py"

CONFIG = """\
[app]
name = "shop"

[secrets]
providers = ["local"]

[services.web]
command = "{python} app.py {{port}} {names}"
port = {port}
stop_timeout = "3s"
secrets = [{secrets}]
as_file = {as_file}

[services.web.health]
path = "/healthz"
interval = "100ms"
timeout = "1s"
healthy_threshold = 2
start_timeout = "5s"

[hooks.smoke]
command = "echo smoke sees $DB_PASSWORD; echo smoke err $DB_PASSWORD >&2"

[hooks.post_deploy]
command = "echo post_deploy sees $DB_PASSWORD"

[rollout]
standby = "{standby}"
drain_timeout = "2s"
bake = "0s"

[environments.dev]
"""


def configure(
    project: Project,
    names: tuple[str, ...] = ("DB_PASSWORD",),
    as_file: bool = False,
    standby: str = "60s",
) -> None:
    shutil.copy(APP, project.dir / "app.py")
    (project.dir / "conveyor.toml").write_text(
        CONFIG.format(
            python=sys.executable,
            port=project.port,
            names=" ".join(names),
            secrets=", ".join(f'"{n}"' for n in names),
            as_file="true" if as_file else "false",
            standby=standby,
        )
    )


def with_master_key(project: Project) -> None:
    # The key is not a secret value of the app's: it may be anywhere but the project.
    project.env["CONVEYOR_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()


def set_secret(project: Project, name: str, value: str) -> subprocess.CompletedProcess[str]:
    """`conveyor secrets set NAME --env dev`, the value on stdin (never argv)."""
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "secrets", "set", name, "--env", "dev"],
        env=project.env,
        cwd=project.dir,
        input=value,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def served(project: Project) -> dict[str, Any]:
    status, body, _ = project.get()
    assert status == 200, body
    return dict(json.loads(body))


def long_value() -> str:
    return "pw-" + secrets.token_urlsafe(48)


def test_a_service_gets_its_secret_and_no_file_or_output_holds_it(project: Project) -> None:
    """THE LEAK TEST: a full deploy with hooks and a service printing its secret."""
    with_master_key(project)
    configure(project)
    value = long_value()
    printed = [set_secret(project, "DB_PASSWORD", value)]
    project.release("v1")
    printed.append(project.cli("deploy", "v1", "--env", "dev"))
    assert printed[-1].returncode == 0, printed[-1].stderr
    assert served(project)["DB_PASSWORD"]["sha256"] == digest(value)
    project.release("v2")
    printed.append(project.cli("deploy", "v2", "--env", "dev"))
    assert printed[-1].returncode == 0, printed[-1].stderr
    for args in (
        ("status", "--env", "dev"),
        ("status", "--env", "dev", "--json"),
        ("history", "--env", "dev"),
        ("history", "--env", "dev", "--json"),
        ("logs", "web", "--env", "dev"),
        ("logs", "web", "--env", "dev", "--json"),
        ("audit", "--json"),
        ("secrets", "list", "--env", "dev"),
        ("rollback", "--env", "dev"),
    ):
        printed.append(project.cli(*args))
    # The service did print it, and its log says which secret it was.
    logs = project.cli("logs", "web", "--env", "dev").stdout
    assert "starting with DB_PASSWORD=[secret:DB_PASSWORD]" in logs
    deployment_logs = "".join(p.read_text() for p in project.home.glob("logs/dev/deployments/*"))
    assert "smoke sees [secret:DB_PASSWORD]" in deployment_logs
    assert "smoke err [secret:DB_PASSWORD]" in deployment_logs
    assert "post_deploy sees [secret:DB_PASSWORD]" in deployment_logs
    # History records the version used, not the value.
    code, history = project.history("dev")
    assert code == 0
    assert history[-1]["secrets"] == {"DB_PASSWORD": {"provider": "local", "version": "1"}}
    project.cli("agent", "stop", "--yes")  # its last words in agent.log count too
    needles = {value.encode(), value[: len(value) // 2].encode(), value[len(value) // 2 :].encode()}
    leaks = []
    for path in sorted(project.dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            leaks += [str(path) for needle in needles if needle in content]
    for proc in printed:
        for text in (proc.stdout, proc.stderr):
            leaks += [" ".join(proc.args[2:5]) for n in needles if n.decode() in text]
    assert leaks == []


def test_as_file_gives_private_files_that_go_with_their_color(project: Project) -> None:
    with_master_key(project)
    configure(project, names=("DB_PASSWORD", "API_TOKEN"), as_file=True)
    password, token = long_value(), long_value()
    set_secret(project, "DB_PASSWORD", password)
    set_secret(project, "API_TOKEN", token)
    project.release("v1")
    code, out = project.deploy("v1")
    assert code == 0, out
    report = served(project)
    assert report["DB_PASSWORD"]["sha256"] == digest(password)
    assert report["API_TOKEN"]["sha256"] == digest(token)
    path = Path(report["DB_PASSWORD"]["file"])
    assert path.is_relative_to(project.home / "run" / "secrets" / "dev" / "web")
    assert report["DB_PASSWORD"]["mode"] == "0o600"
    assert report["DB_PASSWORD"]["dir_mode"] == "0o700"
    for parent in (path.parent, path.parent.parent, path.parent.parent.parent):
        assert oct(parent.stat().st_mode & 0o777) == "0o700", parent
    # Not in the environment itself: only the path is.
    environ = Path(f"/proc/{report_pid(project)}/environ").read_bytes()
    assert password.encode() not in environ and str(path).encode() in environ
    stopped = project.cli("stop", "--env", "dev", "--yes")
    assert stopped.returncode == 0, stopped.stderr
    assert not path.exists() and not path.parent.exists()


def report_pid(project: Project) -> int:
    rows = project.db("SELECT handle FROM instances WHERE role = 'active'")
    return int(json.loads(rows[0][0])["ref"]["pid"])


def test_a_missing_secret_fails_the_deploy_before_traffic_moves(project: Project) -> None:
    with_master_key(project)
    configure(project)
    value = long_value()
    set_secret(project, "DB_PASSWORD", value)
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    configure(project, names=("DB_PASSWORD", "NOT_SET_ANYWHERE"))
    project.release("v2")
    code, out = project.deploy("v2")
    assert code == 1, out
    assert "NOT_SET_ANYWHERE" in out["error"] and "local" in out["error"], out
    assert "nothing was started" in out["error"]
    assert project.serving() == "v1"
    assert project.db("SELECT version FROM instances") == [("v1",)]
    _, history = project.history("dev")
    assert history[0]["version"] == "v2" and history[0]["outcome"] == "failed"


def secret_versions(history_row: dict[str, Any]) -> dict[str, str]:
    return {n: f"{p['provider']}:{p['version']}" for n, p in history_row["secrets"].items()}


def test_rotation_redeploys_the_live_release_and_rollback_restores_versions(
    project: Project,
) -> None:
    with_master_key(project)
    configure(project)
    first, second, third = long_value(), long_value(), long_value()
    set_secret(project, "DB_PASSWORD", first)
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    # Nothing changed: refused as ever.
    code, out = project.deploy("v1")
    assert code == 2 and "already live" in out["error"], out
    # Rotated: a secret change alone restarts nothing ...
    set_secret(project, "DB_PASSWORD", second)
    assert served(project)["DB_PASSWORD"]["sha256"] == digest(first)
    # ... until the live release is deployed again, without --force, blue/green.
    code, out = project.deploy("v1")
    assert code == 0, out
    assert served(project)["DB_PASSWORD"]["sha256"] == digest(second)
    code, history = project.history("dev")
    latest = history[0]
    assert "(only the secrets changed: DB_PASSWORD local:1 -> local:2)" in latest["reason"]
    assert secret_versions(latest) == {"DB_PASSWORD": "local:2"}
    # v2 on a third version; a rollback goes back to v1 with the version v1 ran with.
    set_secret(project, "DB_PASSWORD", third)
    project.release("v2")
    assert project.deploy("v2")[0] == 0
    assert served(project)["DB_PASSWORD"]["sha256"] == digest(third)
    code, out = project.json("rollback", "--env", "dev")
    assert code == 0, out
    assert project.serving() == "v1"
    assert served(project)["DB_PASSWORD"]["sha256"] == digest(second)
    code, status = project.json("status", "--env", "dev")
    assert status["services"][0]["active"]["secrets"] == {
        "DB_PASSWORD": {"provider": "local", "version": "2"}
    }
    # A leaked secret was rotated: --keep-secrets redeploys v1 with the current version.
    assert project.deploy("v2")[0] == 0
    code, out = project.json("rollback", "--env", "dev", "--keep-secrets")
    assert code == 0, out
    assert project.serving() == "v1"
    assert served(project)["DB_PASSWORD"]["sha256"] == digest(third)


def test_a_restart_after_a_crash_uses_the_deployments_versions(project: Project) -> None:
    with_master_key(project)
    configure(project)
    first, second = long_value(), long_value()
    set_secret(project, "DB_PASSWORD", first)
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    set_secret(project, "DB_PASSWORD", second)  # rotated, not deployed
    pid = report_pid(project)
    os.kill(pid, 9)
    wait_for(lambda: report_pid(project) != pid, 30, "the supervisor's restart")
    wait_for(lambda: project.serving() == "v1", 30, "v1 to serve again")
    assert served(project)["DB_PASSWORD"]["sha256"] == digest(first)


def test_deploy_refuses_a_literal_credential_in_conveyor_toml(project: Project) -> None:
    with_master_key(project)
    configure(project)
    token = "sk_live_" + secrets.token_hex(16)
    toml = project.dir / "conveyor.toml"
    text = toml.read_text().replace(
        "as_file = false\n", f'as_file = false\nenv = {{ STRIPE_API_KEY = "{token}" }}\n'
    )
    toml.write_text(text)
    line = text.splitlines().index(f'env = {{ STRIPE_API_KEY = "{token}" }}') + 1
    set_secret(project, "DB_PASSWORD", long_value())
    project.release("v1")
    code, out = project.deploy("v1")
    assert code == 2, out
    assert f"conveyor.toml:{line}" in out["error"], out
    assert "services.web.env.STRIPE_API_KEY" in out["error"]
    assert "conveyor secrets set" in out["error"]
    assert token not in out["error"]
    assert project.db("SELECT count(*) FROM instances") == [(0,)]


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.path, json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_webhook_url_kept_as_a_secret_is_used_and_never_written(project: Project) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with_master_key(project)
        configure(project)
        path = f"/hooks/{secrets.token_urlsafe(24)}"
        password = long_value()
        set_secret(project, "DB_PASSWORD", password)
        set_secret(project, "HOOK_URL", f"http://127.0.0.1:{server.server_address[1]}{path}")
        with (project.dir / "conveyor.toml").open("a") as f:
            f.write('\n[[notifications]]\nurl_secret = "HOOK_URL"\nevents = ["succeeded"]\n')
        project.release("v1")
        assert project.deploy("v1")[0] == 0
        seen = wait_for(lambda: server.seen, 30, "the webhook")  # type: ignore[attr-defined]
        assert seen[0][0] == path and seen[0][1]["event"] == "succeeded"
        assert password not in json.dumps(seen)
    finally:
        server.shutdown()
    project.cli("agent", "stop", "--yes")
    written = [p for p in project.dir.rglob("*") if p.is_file() and path.encode() in p.read_bytes()]
    assert written == []
