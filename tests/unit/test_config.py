from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.config import (
    AgentConfig,
    Config,
    ConfigError,
    HealthConfig,
    ProxyConfig,
    RolloutConfig,
    ServiceConfig,
    find_config,
    load_config,
)
from conveyor.config.loader import KeyLocator
from conveyor.config.models import deep_merge

FULL_EXAMPLE = """\
[app]
name = "shop"

[services.web]
command = "python -m myapp --port {port}"   # local runtime: {port} is substituted
port = 8080                                  # public port the proxy listens on
env = { LOG_LEVEL = "info" }

[services.web.health]
path = "/healthz"
interval = "1s"
timeout = "2s"
healthy_threshold = 2       # consecutive passes before the new color may receive traffic
unhealthy_threshold = 3
start_timeout = "60s"       # the new version must be healthy within this

[services.jobs]             # a worker: no port, no proxy
command = "python -m myapp.worker"
kind = "worker"

[rollout]
standby = "10m"             # how long the old color keeps running after the switch
drain_timeout = "30s"       # in-flight requests on the old color may finish within this

[environments.dev]
[environments.staging.services.web]
port = 18080                # per-environment overrides of any service field
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conveyor.toml"
    path.write_text(text)
    return path


def test_full_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_EXAMPLE))
    assert config.app.name == "shop"
    assert config.source == tmp_path / "conveyor.toml"
    web = config.services["web"]
    assert web.kind == "web"
    assert web.port == 8080
    assert web.env == {"LOG_LEVEL": "info"}
    assert web.health == HealthConfig(
        path="/healthz",
        interval=1.0,
        timeout=2.0,
        healthy_threshold=2,
        unhealthy_threshold=3,
        start_timeout=60.0,
    )
    jobs = config.services["jobs"]
    assert (jobs.kind, jobs.port) == ("worker", None)
    assert config.rollout == RolloutConfig(standby=600.0, drain_timeout=30.0)
    assert list(config.environments) == ["dev", "staging"]

    dev = config.environment("dev")
    staging = config.environment("staging")
    assert (dev.name, dev.app) == ("dev", "shop")
    assert dev.services["web"].port == 8080
    assert staging.services["web"].port == 18080
    assert staging.services["web"].command == web.command
    assert staging.services["web"].health == web.health
    assert staging.services["jobs"] == jobs
    assert list(staging.web_services()) == ["web"]


def test_defaults(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, '[app]\nname = "a"\n[services.web]\ncommand = "serve {port}"\nport = 80\n')
    )
    web = config.services["web"]
    assert web == ServiceConfig(command="serve {port}", port=80)
    assert (web.kind, web.listen, web.env, web.stop_timeout, web.workdir) == (
        "web",
        "127.0.0.1",
        {},
        10.0,
        ".",
    )
    assert web.health == HealthConfig()
    assert (web.health.path, web.health.interval, web.health.timeout) == ("/healthz", 1.0, 2.0)
    assert (web.health.healthy_threshold, web.health.unhealthy_threshold) == (2, 3)
    assert web.health.start_timeout == 60.0
    assert config.rollout == RolloutConfig()
    assert (config.rollout.standby, config.rollout.drain_timeout) == (600.0, 30.0)
    assert config.proxy == ProxyConfig()
    assert config.proxy.model_dump() == {
        "max_request_line": 8192,
        "max_header_size": 65536,
        "max_headers": 100,
        "connect_timeout": 5.0,
        "upstream_timeout": 60.0,
        "retries": 3,
    }
    assert config.agent == AgentConfig()
    assert (config.agent.admin_host, config.agent.admin_port) == ("127.0.0.1", 0)


def test_implicit_dev_environment(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, '[app]\nname = "a"\n[services.web]\ncommand = "serve {port}"\nport = 80\n')
    )
    assert list(config.environments) == ["dev"]
    assert config.environment("dev").services == config.services
    with pytest.raises(ConfigError) as caught:
        config.environment("prod")
    assert str(caught.value).endswith("--env: unknown environment 'prod' (known: dev)")
    assert caught.value.line is None


def test_overrides_merge_deeply(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            FULL_EXAMPLE
            + """
[environments.staging.services.web.health]
interval = "5s"

[environments.staging.services.web.env]
DEBUG = "1"

[environments.staging.services.jobs]
stop_timeout = "1m"

[environments.staging.rollout]
standby = "1h"
""",
        )
    )
    base = config.services["web"]
    staging = config.environment("staging")
    web = staging.services["web"]
    assert web.port == 18080
    assert web.health.interval == 5.0
    assert web.health.model_dump(exclude={"interval"}) == base.health.model_dump(
        exclude={"interval"}
    )
    assert web.env == {"LOG_LEVEL": "info", "DEBUG": "1"}
    assert staging.services["jobs"].stop_timeout == 60.0
    assert staging.rollout == RolloutConfig(standby=3600.0, drain_timeout=30.0)
    # The base and the other environments are untouched.
    assert config.environment("dev").services["web"] == base
    assert config.environment("dev").rollout.standby == 600.0


def test_an_override_cannot_remove_a_key(tmp_path: Path) -> None:
    # Deep merge adds and replaces keys, it cannot delete one: a web service with a port cannot
    # become a worker in one environment. The error points at the override.
    with pytest.raises(ConfigError) as caught:
        load_config(
            write(
                tmp_path,
                '[app]\nname = "a"\n[services.web]\ncommand = "serve"\nport = 80\n'
                '[environments.batch.services.web]\nkind = "worker"\n',
            )
        )
    assert (caught.value.line, caught.value.key) == (6, "environments.batch.services.web.port")


def test_proxy_agent_and_service_keys(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[app]\nname = "a"\n'
            "[services.web]\n"
            'command = "serve {port}"\nport = 8080\nlisten = "0.0.0.0"\n'
            'stop_timeout = "1m30s"\nworkdir = "backend/src"\n'
            "[services.admin]\n"
            'command = "admin {port}"\nport = 8081\n'
            '[proxy]\nmax_headers = 10\nconnect_timeout = "250ms"\nretries = 0\n'
            '[agent]\nadmin_port = 9100\nadmin_host = "127.0.0.2"\n',
        )
    )
    web = config.services["web"]
    assert (web.listen, web.stop_timeout, web.workdir) == ("0.0.0.0", 90.0, "backend/src")
    assert (config.proxy.max_headers, config.proxy.connect_timeout, config.proxy.retries) == (
        10,
        0.25,
        0,
    )
    assert (config.agent.admin_host, config.agent.admin_port) == ("127.0.0.2", 9100)
    assert config.environment("dev").proxy == config.proxy


def test_same_port_on_different_hosts_is_fine(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[app]\nname = "a"\n'
            '[services.web]\ncommand = "s {port}"\nport = 80\n'
            '[services.api]\ncommand = "s {port}"\nport = 80\nlisten = "127.0.0.2"\n',
        )
    )
    assert config.environment("dev").services["api"].listen == "127.0.0.2"


def test_ports_are_checked_per_environment(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[app]\nname = "a"\n'
            '[services.web]\ncommand = "s {port}"\nport = 80\n'
            '[services.api]\ncommand = "s {port}"\nport = 81\n'
            "[environments.dev]\n"
            "[environments.swapped.services]\nweb.port = 81\napi.port = 80\n",
        )
    )
    swapped = config.environment("swapped").services
    assert (swapped["web"].port, swapped["api"].port) == (81, 80)
    assert config.environment("dev").services["web"].port == 80


def test_numbers_as_seconds(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[app]\nname = "a"\n[services.web]\ncommand = "s {port}"\nport = 80\n'
            "health = { interval = 0.5, start_timeout = 30 }\n",
        )
    )
    assert config.services["web"].health.interval == 0.5
    assert config.services["web"].health.start_timeout == 30.0


def test_models_are_frozen() -> None:
    service = ServiceConfig(command="serve {port}", port=80)
    with pytest.raises(ValueError):
        setattr(service, "port", 81)  # noqa: B010 (an attribute write, on purpose)


def test_command_for_substitutes_the_port() -> None:
    assert ServiceConfig(command="serve --port {port} --x={port}", port=80).command_for(4100) == (
        "serve --port 4100 --x=4100"
    )
    assert ServiceConfig(command="work", kind="worker").command_for(None) == "work"


def test_config_built_in_code_resolves() -> None:
    config = Config.model_validate(
        {"app": {"name": "a"}, "services": {"web": {"command": "s {port}", "port": 80}}}
    )
    assert config.environment("dev").services["web"].port == 80


def test_deep_merge() -> None:
    base = {"a": 1, "t": {"x": 1, "y": {"z": 1}}, "l": [1]}
    merged = deep_merge(base, {"t": {"y": {"w": 2}}, "l": [2], "b": 3})
    assert merged == {"a": 1, "t": {"x": 1, "y": {"z": 1, "w": 2}}, "l": [2], "b": 3}
    assert base == {"a": 1, "t": {"x": 1, "y": {"z": 1}}, "l": [1]}


# --- find_config -------------------------------------------------------------------------------


def test_find_config_walks_up(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_config(deep) == path.resolve()
    assert find_config(tmp_path) == path.resolve()
    (deep / "file.py").write_text("")
    assert find_config(deep / "file.py") == path.resolve()


def test_find_config_prefers_the_nearest(tmp_path: Path) -> None:
    write(tmp_path, "")
    inner = tmp_path / "inner"
    inner.mkdir()
    nearest = write(inner, "")
    assert find_config(inner) == nearest.resolve()


def test_find_config_none(tmp_path: Path) -> None:
    # tmp_path's parents (/tmp, /) have no conveyor.toml on a sane test machine.
    with pytest.raises(ConfigError) as caught:
        find_config(tmp_path)
    assert "conveyor init" in str(caught.value)


# --- KeyLocator --------------------------------------------------------------------------------

LOCATOR_TEXT = """\
# comment with [fake.table] and key = 1
top = 1
[a]
b = "text with = and [brackets] and # hash"
c.d = 2
"quoted key".e = 3
inline = { x = 1, y = { z = 2 } }
multi = '''
fake = 1
[fake]
'''
arr = [
  1,  # comment
  { k = 1 },
]
when = 1979-05-27 07:32:00Z
after = true

[[items]]
name = "one"

[a.sub]
deep = 1
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("top",), 2),
        (("a",), 3),
        (("a", "b"), 4),
        (("a", "c"), 5),
        (("a", "c", "d"), 5),
        (("a", "quoted key", "e"), 6),
        (("a", "inline", "x"), 7),
        (("a", "inline", "y", "z"), 7),
        (("a", "multi"), 8),
        (("a", "arr"), 12),
        (("a", "arr", "1", "k"), 14),
        (("a", "when"), 16),
        (("a", "after"), 17),
        (("items", "name"), 20),
        (("a", "sub", "deep"), 23),
        # missing keys fall back to the nearest written parent
        (("a", "sub", "missing"), 22),
        (("a", "inline", "missing"), 7),
        (("items",), 19),
        (("nothing",), None),
        (("fake",), None),
    ],
)
def test_locator(path: tuple[str, ...], line: int | None) -> None:
    assert KeyLocator(LOCATOR_TEXT).line_of(path) == line
