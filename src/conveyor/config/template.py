"""The commented conveyor.toml that `conveyor init` writes, and a guess at what to put in it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conveyor.config.models import NAME_PATTERN

FALLBACK = ("python3 -m http.server {port} --bind 127.0.0.1", 8080, "/")


def default_app_name(project_dir: Path) -> str:
    """The project directory's name, made into a valid app name ("My Shop" -> "my-shop")."""
    name = re.sub(r"[^a-z0-9_-]+", "-", project_dir.resolve().name.lower()).strip("-_")
    return name if NAME_PATTERN.fullmatch(name) else "app"


def detect(project_dir: Path) -> tuple[str, int, str]:
    """Guess (command, public port, health path) from the files in `project_dir`.

    Only obvious cases are recognised: Django (manage.py), and a FastAPI or Flask app in app.py
    or main.py. Anything else gets a static file server, which at least deploys; the health path
    is "/" because we cannot know whether the app has a dedicated endpoint.
    """
    if (project_dir / "manage.py").is_file():
        # --noreload: the autoreloader restarts the server on file changes, and the release tree
        # is immutable anyway; it would only add a second process.
        return ("python3 manage.py runserver 127.0.0.1:{port} --noreload", 8080, "/")
    for filename in ("app.py", "main.py"):
        path = project_dir / filename
        if not path.is_file():
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        module = path.stem
        fastapi = re.search(r"^(\w+)\s*=\s*FastAPI\(", source, re.MULTILINE)
        if fastapi:
            target = f"{module}:{fastapi.group(1)}"
            return (f"python3 -m uvicorn {target} --host 127.0.0.1 --port {{port}}", 8080, "/")
        if re.search(r"^\s*(from flask import|import flask)", source, re.MULTILINE):
            return (
                f"python3 -m flask --app {module} run --host 127.0.0.1 --port {{port}}",
                8080,
                "/",
            )
    return FALLBACK


def _toml_string(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def render_template(app_name: str, command: str, port: int, health_path: str) -> str:
    return _TEMPLATE.format(
        app_name=_toml_string(app_name),
        command=_toml_string(command),
        port=port,
        health_path=_toml_string(health_path),
    )


# Literal braces are doubled: this text goes through str.format.
_TEMPLATE = """\
# conveyor.toml: how conveyor deploys this project.
# Reference: docs/configuration.md. Durations are written 500ms, 2s, 5m, 1h or 1m30s.
# Commented-out keys show their default value.

[app]
# The application's name: lowercase letters, digits, '-' and '_'. Releases and deploy history
# are recorded under it.
name = {app_name}

# ---------------------------------------------------------------------------------------------
# Services: the processes of one release. Each deploy starts the new version next to the old
# one (the other "color"), checks its health, then switches traffic over.
# ---------------------------------------------------------------------------------------------

[services.web]
# The command that starts one instance, run from the release directory. {{port}} is replaced
# by the private port this color must listen on; the PORT environment variable holds it too.
command = {command}

# The kind of service: "web" serves HTTP behind conveyor's proxy; "worker" has no port and no
# proxy: the new version starts, then the old one gets SIGTERM and stop_timeout to finish.
# kind = "web"

# The public port the proxy listens on. Clients always connect here; conveyor moves them from
# one color to the other.
port = {port}

# The address the proxy listens on. Use "0.0.0.0" to accept connections from other machines.
# listen = "127.0.0.1"

# Extra environment variables for the process (conveyor sets PORT itself).
# env = {{ LOG_LEVEL = "info" }}

# Grace period after SIGTERM before the process group is killed.
# stop_timeout = "10s"

# The directory to run the command in, relative to the root of the release.
# workdir = "."

[services.web.health]
# The HTTP path probed on the new color; any 2xx response passes.
path = {health_path}
# How often to probe, and how long one probe may take.
# interval = "1s"
# timeout = "2s"
# Consecutive passes before the new color may receive traffic.
# healthy_threshold = 2
# Consecutive failures before a running color counts as unhealthy.
# unhealthy_threshold = 3
# The new version must become healthy within this, or the deploy fails and traffic stays put.
# start_timeout = "60s"

# A background worker: no port, no health probe over HTTP.
# [services.jobs]
# kind = "worker"
# command = "python3 -m myapp.worker"

[rollout]
# How long the old color keeps running after the switch, so `conveyor rollback` is instant.
# standby = "10m"
# In-flight requests on the old color may finish within this before it is stopped.
# drain_timeout = "30s"

[proxy]
# Limits and timeouts of the built-in reverse proxy.
# max_request_line = 8192       # bytes in the request line
# max_header_size = 65536       # bytes in all headers together
# max_headers = 100
# connect_timeout = "5s"        # connecting to the backend color
# upstream_timeout = "60s"      # waiting for the backend's response
# retries = 3                   # rounds of re-connecting (with back-off) before answering 502

[agent]
# The agent's admin HTTP endpoint (/metrics). Port 0 picks a free port: see `conveyor agent status`.
# admin_host = "127.0.0.1"
# admin_port = 0

# ---------------------------------------------------------------------------------------------
# Environments: named deploy targets. Without this section there is one, "dev". Each one may
# override any service key (tables merge key by key) and the rollout settings.
# ---------------------------------------------------------------------------------------------

[environments.dev]

# [environments.staging.services.web]
# port = 18080
#
# [environments.staging.services.web.health]
# interval = "5s"
#
# [environments.staging.rollout]
# standby = "1h"
"""
