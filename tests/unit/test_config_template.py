from __future__ import annotations

import re
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
    # The first [[rollout.analysis]] is the default check; the others are examples.
    assert config.rollout.analysis[0] == DEFAULT_ANALYSIS[0]
    assert [c.metric for c in config.rollout.analysis] == list(METRICS)
    assert config.rollout.model_copy(update={"analysis": []}) == RolloutConfig()
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
    # the two cannot both be uncommented; `field` is described in the http example.
    prose = {"header", "field", "min"}
    for key in keys:
        if key in prose:
            assert re.search(rf"\b{key}\b", text), key
        else:
            assert re.search(rf"^#? ?{key} = |\.{key}\]|^# \[\[?{key}\]", text, re.MULTILINE), key


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
