from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from pydantic import BaseModel

from conveyor.config import load_config
from conveyor.config.models import (
    DEFAULT_ANALYSIS,
    METRICS,
    AgentConfig,
    AnalysisCheck,
    HealthConfig,
    HookConfig,
    HooksConfig,
    NotificationConfig,
    ProxyConfig,
    RolloutConfig,
    StickyConfig,
)
from conveyor.config.template import (
    PLACEHOLDER,
    Guess,
    default_app_name,
    detect,
    render_template,
)


def test_template_loads_back(tmp_path: Path) -> None:
    text = render_template("shop", "python3 -m myapp --port {port}", 8123, "/healthz")
    path = tmp_path / "conveyor.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.app.name == "shop"
    web = config.environment("dev").services["web"]
    assert (web.command, web.port, web.health.path) == (
        "python3 -m myapp --port {port}",
        8123,
        "/healthz",
    )


def test_template_quotes_values(tmp_path: Path) -> None:
    command = 'sh -c "echo \\\\ \\"hi\\" && serve --port {port}"'
    text = render_template("a", command, 80, "/health?probe=1")
    path = tmp_path / "conveyor.toml"
    path.write_text(text)
    assert load_config(path).services["web"].command == command


def test_template_commented_examples_are_valid(tmp_path: Path) -> None:
    # Uncommenting every commented-out key and table must still give a valid file whose
    # values are the documented defaults: the comments cannot drift from the models.
    text = render_template("shop", "serve {port}", 8080, "/")
    uncommented, count = re.subn(r"^# (?=[a-z_]+ = |\[)", "", text, flags=re.MULTILINE)
    assert count > 20
    path = tmp_path / "conveyor.toml"
    path.write_text(uncommented)
    config = load_config(path)
    assert config.services["web"].health == HealthConfig(path="/")
    assert config.services["jobs"].kind == "worker"
    # The first [[rollout.analysis]] is the default check; the others are examples.
    assert config.rollout.analysis[0] == DEFAULT_ANALYSIS[0]
    assert [c.metric for c in config.rollout.analysis] == list(METRICS)
    # on_inconclusive is unset by default (it follows the strategy); the comment shows its value.
    assert config.rollout.on_inconclusive == RolloutConfig().inconclusive_policy()
    assert (
        config.rollout.model_copy(update={"analysis": [], "on_inconclusive": None})
        == RolloutConfig()
    )
    assert config.services["web"].preview_port == 8081
    assert config.proxy == ProxyConfig()
    assert config.agent == AgentConfig(admin_token_file="admin.token")
    assert config.hooks.smoke == HookConfig(command="python3 smoke.py")
    assert all(hook is not None for hook in config.hooks.model_dump().values())
    assert config.notifications == [
        NotificationConfig(url="https://hooks.slack.com/services/T000/B000/XXXX")
    ]
    staging = config.environment("staging")
    assert staging.services["web"].port == 18080
    assert staging.services["web"].health.interval == 5.0
    assert (staging.rollout.strategy, staging.rollout.steps[-1].weight) == ("canary", 100)
    assert staging.hooks.pre_deploy == HookConfig(command="./check-freeze.sh --staging")
    assert staging.hooks.smoke == config.hooks.smoke


def test_template_preview_port_example_differs_from_port(tmp_path: Path) -> None:
    text = render_template("shop", "serve {port}", 65535, "/")
    uncommented = re.sub(r"^# (?=preview_port = )", "", text, flags=re.MULTILINE)
    path = tmp_path / "conveyor.toml"
    path.write_text(uncommented)
    assert load_config(path).services["web"].preview_port == 65534


def test_template_mentions_every_key() -> None:
    text = render_template("shop", "serve {port}", 8080, "/")
    models: list[type[BaseModel]] = [
        HealthConfig,
        RolloutConfig,
        StickyConfig,
        AnalysisCheck,
        HooksConfig,
        NotificationConfig,
        ProxyConfig,
        AgentConfig,
    ]
    keys = [name for model in models for name in model.model_fields]
    keys += ["command", "kind", "port", "preview_port", "listen", "env", "stop_timeout"]
    keys += ["workdir", "health", "hooks", "notifications"]
    # Documented in prose rather than as a key line: it is the alternative to `cookie`, and
    # the two cannot both be uncommented (so is `url_secret`, to `url`); `field` is described in
    # the http example.
    prose = {"header", "field", "min", "url_secret"}
    for key in keys:
        if key in prose:
            assert re.search(rf"\b{key}\b", text), key
        else:
            assert re.search(rf"^#? ?{key} = |\.{key}\]|^# \[\[?{key}\]", text, re.MULTILINE), key


def test_detect_django(tmp_path: Path) -> None:
    (tmp_path / "manage.py").write_text("import django\n")
    guess = detect(tmp_path)
    assert guess.command == "python3 manage.py runserver 127.0.0.1:{port} --noreload"
    assert (guess.port, guess.health, guess.recognised) == (8080, "/", True)
    assert "development server" in guess.notes[0]


@pytest.mark.parametrize("filename", ["app.py", "main.py"])
def test_detect_fastapi(tmp_path: Path, filename: str) -> None:
    (tmp_path / filename).write_text("from fastapi import FastAPI\n\napi = FastAPI()\n")
    command = detect(tmp_path).command
    module = filename.removesuffix(".py")
    assert command == f"python3 -m uvicorn {module}:api --host 127.0.0.1 --port {{port}}"


def test_detect_flask(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    guess = detect(tmp_path)
    assert guess.command == "python3 -m flask --app app run --host 127.0.0.1 --port {port}"
    assert "install gunicorn" in guess.notes[0]


def _program(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_flask_prefers_gunicorn_from_the_apps_virtualenv(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("from flask import Flask\nweb = Flask(__name__)\n")
    gunicorn = _program(tmp_path / ".venv" / "bin", "gunicorn")
    guess = detect(tmp_path)
    assert guess.command == f"{gunicorn} --bind 127.0.0.1:{{port}} app:web"
    assert guess.notes == ()


def test_without_a_server_the_apps_own_python_runs_it(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("import flask\n")
    python = _program(tmp_path / "venv" / "bin", "python")
    assert detect(tmp_path).command.startswith(f"{python} -m flask --app app run")


def test_fastapi_prefers_uvicorn_from_the_active_virtualenv_or_path(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("from fastapi import FastAPI\napp = FastAPI()\n")
    active = _program(tmp_path / "elsewhere" / "bin", "uvicorn")
    guess = detect(tmp_path, {"VIRTUAL_ENV": str(tmp_path / "elsewhere")})
    assert guess.command == f"{active} main:app --host 127.0.0.1 --port {{port}}"
    on_path = _program(tmp_path / "bin", "uvicorn")
    guess = detect(tmp_path, {"PATH": str(tmp_path / "bin")})
    assert guess.command.startswith(f"{on_path} main:app")


def test_django_with_gunicorn_serves_its_wsgi_module(tmp_path: Path) -> None:
    (tmp_path / "manage.py").write_text(
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'shop.settings')\n"
    )
    gunicorn = _program(tmp_path / ".venv" / "bin", "gunicorn")
    assert detect(tmp_path).command == (
        f"{gunicorn} --bind 127.0.0.1:{{port}} shop.wsgi:application"
    )


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ('@app.get("/healthz")\n@app.get("/health")', "/healthz"),
        ("@app.route('/up')\n@app.route('/livez')", "/livez"),
        ('path("health/", views.health)', "/health"),
        ('direction = "up"', "/"),
        ("", "/"),
    ],
)
def test_the_health_path_comes_from_a_route_in_the_code(
    tmp_path: Path, code: str, expected: str
) -> None:
    (tmp_path / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "routes.py").write_text(code + "\n")
    assert detect(tmp_path).health == expected


def test_an_unrecognised_app_gets_a_placeholder_that_serves_nothing(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text("{}\n")
    (tmp_path / ".env").write_text("SECRET=1\n")
    guess = detect(tmp_path)
    assert guess == Guess(PLACEHOLDER, 8080, "/", recognised=False)
    assert "http.server" not in PLACEHOLDER
    result = subprocess.run(
        ["/bin/sh", "-c", f"exec {PLACEHOLDER}"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "edit services.web.command in conveyor.toml" in result.stderr


def test_detected_commands_make_valid_configs(tmp_path: Path) -> None:
    (tmp_path / "manage.py").write_text("")
    for command, port, health in (
        (detect(tmp_path).command, 8080, "/"),
        (PLACEHOLDER, 8080, "/"),
    ):
        path = tmp_path / "conveyor.toml"
        path.write_text(render_template("a", command, port, health, note="a note\nover two lines"))
        assert load_config(path).services["web"].command == command
        assert "# a note\n# over two lines\ncommand = " in path.read_text()


@pytest.mark.parametrize(
    ("dirname", "expected"),
    [("shop", "shop"), ("My Shop", "my-shop"), ("api_v2", "api_v2"), ("--", "app"), ("É", "app")],
)
def test_default_app_name(tmp_path: Path, dirname: str, expected: str) -> None:
    directory = tmp_path / dirname
    directory.mkdir()
    assert default_app_name(directory) == expected
