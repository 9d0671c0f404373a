from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from conveyor.config import load_config
from conveyor.config.models import AgentConfig, HealthConfig, ProxyConfig, RolloutConfig
from conveyor.config.template import FALLBACK, default_app_name, detect, render_template


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
    assert config.rollout == RolloutConfig()
    assert config.proxy == ProxyConfig()
    assert config.agent == AgentConfig()
    staging = config.environment("staging")
    assert staging.services["web"].port == 18080
    assert staging.services["web"].health.interval == 5.0


def test_template_mentions_every_key() -> None:
    text = render_template("shop", "serve {port}", 8080, "/")
    models: list[type[BaseModel]] = [HealthConfig, RolloutConfig, ProxyConfig, AgentConfig]
    keys = [name for model in models for name in model.model_fields]
    keys += ["command", "kind", "port", "listen", "env", "stop_timeout", "workdir", "health"]
    for key in keys:
        assert re.search(rf"^#? ?{key} = |\.{key}\]", text, re.MULTILINE), key


def test_detect_django(tmp_path: Path) -> None:
    (tmp_path / "manage.py").write_text("import django\n")
    command, port, health = detect(tmp_path)
    assert command == "python3 manage.py runserver 127.0.0.1:{port} --noreload"
    assert (port, health) == (8080, "/")


@pytest.mark.parametrize("filename", ["app.py", "main.py"])
def test_detect_fastapi(tmp_path: Path, filename: str) -> None:
    (tmp_path / filename).write_text("from fastapi import FastAPI\n\napi = FastAPI()\n")
    command, _, _ = detect(tmp_path)
    module = filename.removesuffix(".py")
    assert command == f"python3 -m uvicorn {module}:api --host 127.0.0.1 --port {{port}}"


def test_detect_flask(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    command, _, _ = detect(tmp_path)
    assert command == "python3 -m flask --app app run --host 127.0.0.1 --port {port}"


def test_detect_fallback(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('hello')\n")
    assert detect(tmp_path) == FALLBACK
    assert FALLBACK[0].startswith("python3 -m http.server {port}")
    assert FALLBACK[2] == "/"


def test_detected_commands_make_valid_configs(tmp_path: Path) -> None:
    (tmp_path / "manage.py").write_text("")
    for guess in (detect(tmp_path), FALLBACK):
        path = tmp_path / "conveyor.toml"
        path.write_text(render_template("a", *guess))
        assert load_config(path).services["web"].command == guess[0]


@pytest.mark.parametrize(
    ("dirname", "expected"),
    [("shop", "shop"), ("My Shop", "my-shop"), ("api_v2", "api_v2"), ("--", "app"), ("É", "app")],
)
def test_default_app_name(tmp_path: Path, dirname: str, expected: str) -> None:
    directory = tmp_path / dirname
    directory.mkdir()
    assert default_app_name(directory) == expected
