"""A rollout the configured router cannot carry out is refused at load time, with file:line:key."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.config import ConfigError, load_config
from conveyor.routers.builtin import BuiltinRouter
from conveyor.routers.kinds import FEATURES, ROUTER_FEATURES, WEIGHTS

BASE = """\
[app]
name = "shop"

[services.web]
command = "serve --port {port}"
port = 8080
"""


def load(tmp_path: Path, text: str, features: frozenset[str]) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(BASE + text)
    load_config(path, router_features={"builtin": features})


def test_the_builtin_router_can_do_everything_a_rollout_asks() -> None:
    assert ROUTER_FEATURES["builtin"] == FEATURES
    assert BuiltinRouter.features == FEATURES


def test_canary_needs_weights(tmp_path: Path) -> None:
    text = '[rollout]\nstrategy = "canary"\nsteps = [{ weight = 10 }, { weight = 100 }]\n'
    load(tmp_path, text, FEATURES)  # fine with a router that has weights
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text, FEATURES - {WEIGHTS})
    assert str(err.value).startswith(f"{tmp_path / 'conveyor.toml'}:8: rollout.strategy: ")
    assert "a canary splits traffic by weight, which the 'builtin' router cannot do" in str(
        err.value
    )


def test_an_environment_override_is_blamed_on_its_own_line(tmp_path: Path) -> None:
    text = (
        "[environments.dev]\n"
        "[environments.production.rollout]\n"
        'strategy = "canary"\n'
        "steps = [{ weight = 10 }, { weight = 100 }]\n"
        'sticky = { header = "X-User" }\n'
    )
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text, frozenset())
    message = str(err.value)
    assert ":9: environments.production.rollout.strategy: a canary" in message
    assert ":11: environments.production.rollout.sticky: sticky canary traffic" in message


def test_builtin_metrics_need_counters_and_preview_needs_preview(tmp_path: Path) -> None:
    text = (
        'preview_port = 8081\n\n[[rollout.analysis]]\nmetric = "http"\nurl = "http://127.0.0.1/"\n'
        '\n[[rollout.analysis]]\nmetric = "latency_p99_ms"\nmax = 200\n'
    )
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text, frozenset())
    message = str(err.value)
    assert ":7: services.web.preview_port: a preview port opens a second address" in message
    assert ":14: rollout.analysis.1.metric: latency_p99_ms is measured from the router's" in message
    assert "analysis.0" not in message  # an http check needs nothing of the router
