"""The commented conveyor.toml that `conveyor init` writes, and a guess at what to put in it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from conveyor.config.models import NAME_PATTERN

# For an app `init` does not recognise: a command that only says what to do, and fails the deploy.
# Never a stand-in server: one serving the source tree would serve its secrets (.env) too.
PLACEHOLDER = (
    "sh -c 'echo \"edit services.web.command in conveyor.toml: conveyor init did not "
    "recognise this app\" >&2; exit 1'"
)
# Health routes looked for in the code, best first.
HEALTH_ROUTES = ("/healthz", "/health", "/livez", "/up")
# A quoted route: "/healthz", "/healthz/", or Django's "healthz/" (a bare "up" is just a word).
_HEALTH_LITERAL = re.compile(
    r"""["'](/(?:healthz|health|livez|up)/?|(?:healthz|health|livez|up)/)["']"""
)
_SCANNED_FILES = 500  # a bound for big trees: routes live near the top anyway
_SKIPPED = frozenset({".git", ".conveyor", ".venv", "venv", "node_modules", "__pycache__"})


@dataclass(frozen=True)
class Guess:
    """What `conveyor init` writes for the service, and what it should tell the user."""

    command: str
    port: int
    health: str
    recognised: bool
    notes: tuple[str, ...] = ()


def default_app_name(project_dir: Path) -> str:
    """The project directory's name, made into a valid app name ("My Shop" -> "my-shop")."""
    name = re.sub(r"[^a-z0-9_-]+", "-", project_dir.resolve().name.lower()).strip("-_")
    return name if NAME_PATTERN.fullmatch(name) else "app"


def detect(project_dir: Path, environ: Mapping[str, str] | None = None) -> Guess:
    """Guess the web service of the app in `project_dir`.

    Only obvious cases are recognised: Django (manage.py), and a FastAPI or Flask app in app.py
    or main.py. Installed programs are looked up in the app's virtualenv (`.venv/` or `venv/`),
    then `VIRTUAL_ENV` and `PATH` from `environ` (none when it is None): a production server
    (gunicorn for WSGI, uvicorn for ASGI) is preferred to a development one, and the app's own
    Python to `python3`, written as absolute paths because the service runs from the release
    directory, which has no virtualenv. Anything else gets PLACEHOLDER.
    """
    env = environ or {}
    health = find_health_route(project_dir)
    python = _find(project_dir, "python", env) or "python3"
    manage = project_dir / "manage.py"
    if manage.is_file():
        gunicorn = _find(project_dir, "gunicorn", env)
        settings = re.search(
            r"""DJANGO_SETTINGS_MODULE["']\s*,\s*["'](\w+)\.settings["']""", _read(manage)
        )
        if gunicorn and settings:
            wsgi = f"{settings.group(1)}.wsgi:application"
            return Guess(f"{gunicorn} --bind 127.0.0.1:{{port}} {wsgi}", 8080, health, True)
        # --noreload: the autoreloader restarts the server on file changes, and the release tree
        # is immutable anyway; it would only add a second process.
        return Guess(
            f"{python} manage.py runserver 127.0.0.1:{{port}} --noreload",
            8080,
            health,
            True,
            (_dev_server_note("Django", "gunicorn"),),
        )
    for filename in ("app.py", "main.py"):
        path = project_dir / filename
        if not path.is_file():
            continue
        source = _read(path)
        module = path.stem
        fastapi = re.search(r"^(\w+)\s*=\s*FastAPI\(", source, re.MULTILINE)
        if fastapi:
            target = f"{module}:{fastapi.group(1)}"
            uvicorn = _find(project_dir, "uvicorn", env)
            server = uvicorn or f"{python} -m uvicorn"
            notes = () if uvicorn else ("uvicorn is not installed: `pip install uvicorn`",)
            return Guess(
                f"{server} {target} --host 127.0.0.1 --port {{port}}", 8080, health, True, notes
            )
        if re.search(r"^\s*(from flask import|import flask)", source, re.MULTILINE):
            flask = re.search(r"^(\w+)\s*=\s*Flask\(", source, re.MULTILINE)
            target = f"{module}:{flask.group(1) if flask else 'app'}"
            gunicorn = _find(project_dir, "gunicorn", env)
            if gunicorn:
                return Guess(f"{gunicorn} --bind 127.0.0.1:{{port}} {target}", 8080, health, True)
            return Guess(
                f"{python} -m flask --app {module} run --host 127.0.0.1 --port {{port}}",
                8080,
                health,
                True,
                (_dev_server_note("Flask", "gunicorn"),),
            )
    return Guess(PLACEHOLDER, 8080, health, False)


def _dev_server_note(framework: str, server: str) -> str:
    return (
        f"this is {framework}'s development server: install {server} in the app's virtualenv "
        "and run `conveyor init --force` again for a production server"
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _find(project_dir: Path, program: str, env: Mapping[str, str]) -> str | None:
    """The absolute path of `program`: the app's virtualenv first, then VIRTUAL_ENV, then PATH."""
    dirs = [project_dir / ".venv" / "bin", project_dir / "venv" / "bin"]
    if env.get("VIRTUAL_ENV"):
        dirs.append(Path(env["VIRTUAL_ENV"]) / "bin")
    for directory in dirs:
        candidate = directory / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            # Not resolved: a virtualenv's python is a symlink to the interpreter it was made
            # from, and only the link's path selects the virtualenv.
            return shlex.quote(str(candidate.absolute()))
    if program == "python":
        return None  # `python3` from PATH is what a bare command gets anyway
    found = shutil.which(program, path=env.get("PATH", "")) if env.get("PATH") else None
    return shlex.quote(str(Path(found).absolute())) if found else None


def find_health_route(project_dir: Path) -> str:
    """The best health route mentioned in the app's Python code, or "/" when there is none."""
    found: set[str] = set()
    scanned = 0
    pending = [project_dir]
    while pending and scanned < _SCANNED_FILES:
        directory = pending.pop(0)
        try:
            items = sorted(directory.iterdir())
        except OSError:
            continue
        for item in items:
            if item.is_dir() and not item.is_symlink():
                if item.name not in _SKIPPED and not (item / "pyvenv.cfg").exists():
                    pending.append(item)
            elif item.suffix == ".py" and item.is_file():
                scanned += 1
                found.update("/" + m.strip("/") for m in _HEALTH_LITERAL.findall(_read(item)))
    return next((route for route in HEALTH_ROUTES if route in found), "/")


def _toml_string(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def render_template(
    app_name: str, command: str, port: int, health_path: str, note: str = ""
) -> str:
    return _TEMPLATE.format(
        app_name=_toml_string(app_name),
        note="".join(f"# {line}\n" for line in note.splitlines()),
        command=_toml_string(command),
        port=port,
        # Any port other than `port` makes a valid example.
        preview_port=port + 1 if port < 65535 else port - 1,
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
# It runs with /bin/sh from the release directory (which has no virtualenv): name the app's own
# Python or server by its absolute path, e.g. "/srv/myapp/.venv/bin/gunicorn".
{note}command = {command}

# The kind of service: "web" serves HTTP behind conveyor's proxy; "worker" has no port and no
# proxy: the new version starts, then the old one gets SIGTERM and stop_timeout to finish.
# kind = "web"

# The public port the proxy listens on. Clients always connect here; conveyor moves them from
# one color to the other.
port = {port}

# Where the new version can be tried before it takes traffic, when the rollout waits for
# `conveyor promote` (auto_promote = false). Unset, conveyor picks a free port.
# preview_port = {preview_port}

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

# "bluegreen" moves all traffic to the new version at once; "canary" moves it in steps (see
# the staging example at the end of this file).
# strategy = "bluegreen"
# After the switch (canary: at each step), the new version is watched for this long by the
# analysis below; a failing analysis rolls back automatically. "0s" disables the watch.
# bake = "60s"
# bluegreen: false starts the new version and waits for `conveyor promote` before the switch;
# meanwhile it can be tried on the service's preview_port.
# auto_promote = true
# When a measurement is inconclusive (too little traffic, Prometheus unreachable): count it as
# "pass", as "fail", or "wait" for a conclusive one. Unset: "pass" for bluegreen (the deploy
# ends "live, unverified" and the analysis goes on through the standby window), "wait" for canary.
# on_inconclusive = "pass"
# No wait (for data, a manual gate or step) lasts longer than this; then the deployment is
# aborted (traffic back on the old version), or goes on with on_deadline = "promote".
# progress_deadline = "10m"
# on_deadline = "abort"

# [rollout.sticky]
# canary: clients keep seeing the same version, by a cookie conveyor sets...
# cookie = "conveyor_canary"
# ...or by hashing a request header you already send (then no cookie): header = "X-User-Id"

# The checks the analysis runs. Without any [[rollout.analysis]], this default one is used:
# [[rollout.analysis]]
# metric = "error_rate"         # 5xx and failed requests / responses, measured by the proxy
# max = 0.01                    # fail above 1% (and `min` fails below)
# min_requests = 50             # fewer requests in the window: inconclusive
# interval = "1s"               # how often to measure
# window = "10s"                # over how much recent traffic
# failure_limit = 2             # this many failures in a row fail the analysis
#
# [[rollout.analysis]]
# metric = "latency_p99_ms"     # 99th percentile response time through the proxy
# max = 500
#
# [[rollout.analysis]]
# metric = "prometheus"         # a PromQL query; {{version}} {{color}} {{environment}} {{service}} {{app}}
# name = "5xx ratio"
# query = 'sum(rate(http_requests_total{{status=~"5..",version="{{version}}"}}[1m])) / sum(rate(http_requests_total{{version="{{version}}"}}[1m]))'
# url = "http://127.0.0.1:9090"
# max = 0.01
#
# [[rollout.analysis]]
# metric = "http"               # passes on 2xx, or compares the number at `field` in the JSON
# url = "http://127.0.0.1:{{port}}/internal/selfcheck"
# timeout = "5s"
#
# [[rollout.analysis]]
# metric = "command"            # passes on exit code 0; run in the release directory
# command = "python3 check_queue.py"

[proxy]
# Limits and timeouts of the built-in reverse proxy.
# workers = "auto"              # processes serving requests: "auto" = usable cores, at most 8
# max_request_line = 8192       # bytes in the request line
# max_header_size = 65536       # bytes in all headers together
# max_headers = 100
# connect_timeout = "5s"        # connecting to the backend color
# upstream_timeout = "60s"      # waiting for the backend's response
# retries = 3                   # rounds of re-connecting (with back-off) before answering 502
# keepalive_timeout = "75s"     # idle client keep-alive connections are closed after this
# header_timeout = "10s"        # a client must finish sending a request head within this

[agent]
# The agent's admin HTTP endpoint (/metrics). Port 0 picks a free port: see `conveyor agent status`.
# admin_host = "127.0.0.1"
# admin_port = 0
# admin_token_file = "admin.token"   # bearer token for /metrics; required off loopback
# A copy of the state database in .conveyor/backups/ every backup_every (0 stops them), the
# newest backup_keep kept; `conveyor db backup` takes one by hand.
# backup_every = "24h"
# backup_keep = 7

# ---------------------------------------------------------------------------------------------
# Hooks: shell commands run from the release directory at points of a deploy, with
# CONVEYOR_URL, CONVEYOR_VERSION and CONVEYOR_ENV set. A string is the command; a table adds
# a timeout (default "60s").
# ---------------------------------------------------------------------------------------------

# [hooks]
# pre_deploy = "./check-freeze.sh"     # before anything starts; failing stops the deploy
# smoke = {{ command = "python3 smoke.py", timeout = "60s" }}   # new version healthy, no traffic yet
# post_switch = "./warm-caches.sh"     # traffic moved; a failure is recorded, not fatal
# post_deploy = "./notify.sh"          # the deploy succeeded
# on_rollback = "./page-oncall.sh"     # after a rollback or an abort

# Webhooks told about deploys (Slack incoming webhooks get a Slack message, others JSON).
# [[notifications]]
# url = "https://hooks.slack.com/services/T000/B000/XXXX"
#   (or url_secret = "SLACK_WEBHOOK_URL" instead of url: the URL kept as a secret, docs/secrets.md)
# events = ["started", "switched", "step", "succeeded", "failed", "rolled_back", "aborted", "crash_loop", "break_glass"]
# format = "auto"                      # "json", "slack", or "auto" (slack for hooks.slack.com)
# timeout = "5s"
# retries = 3

# ---------------------------------------------------------------------------------------------
# Environments: named deploy targets. Without this section there is one, "dev". Each one may
# override any service key (tables merge key by key) and the rollout settings.
# ---------------------------------------------------------------------------------------------

[environments.dev]

[environments.dev.rollout]
# A dev environment rarely has the traffic to judge a release: a short bake, and inconclusive
# analysis is accepted (it is still reported) instead of waiting for `conveyor promote`.
bake = "5s"
on_inconclusive = "pass"

# [environments.staging.services.web]
# port = 18080
#
# [environments.staging.services.web.health]
# interval = "5s"
#
# [environments.staging.rollout]
# standby = "1h"
# strategy = "canary"
# steps = [{{ weight = 10, pause = "1m" }}, {{ weight = 50, pause = "manual" }}, {{ weight = 100 }}]
#
# [environments.staging.hooks]
# pre_deploy = "./check-freeze.sh --staging"
"""
