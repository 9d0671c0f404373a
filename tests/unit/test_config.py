from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from conveyor.config import (
    DEFAULT_ANALYSIS,
    DEFAULT_PROMETHEUS_URL,
    EVENTS,
    AgentConfig,
    AnalysisCheck,
    CanaryStep,
    Config,
    ConfigError,
    HealthConfig,
    HookConfig,
    HooksConfig,
    NotificationConfig,
    ProxyConfig,
    RolloutConfig,
    ServiceConfig,
    StickyConfig,
    find_config,
    load_config,
)
from conveyor.config.environments import deep_merge
from conveyor.config.loader import KeyLocator

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
        "workers": "auto",
        "max_request_line": 8192,
        "max_header_size": 65536,
        "max_headers": 100,
        "connect_timeout": 5.0,
        "upstream_timeout": 60.0,
        "retries": 3,
        "keepalive_timeout": 75.0,
        "header_timeout": 10.0,
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


ARRAY_TEXT = """\
[[items]]
name = "one"

[[items]]
name = "two"
sub.x = 1

[[items.parts]]
n = 1

[items.parts.extra]
k = 1

[[items.parts]]
n = 2

[[items]]
name = "three"
steps = [
  { w = 1 },

  { w = 2 }, { w = 3 },
  [ 1,
    2 ],
]

[[other]]
name = "solo"
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("items",), 1),
        (("items", "0"), 1),
        (("items", "0", "name"), 2),
        (("items", "1"), 4),
        (("items", "1", "name"), 5),
        (("items", "1", "sub", "x"), 6),
        (("items", "1", "parts", "0"), 8),
        (("items", "1", "parts", "0", "n"), 9),
        (("items", "1", "parts", "0", "extra", "k"), 12),
        (("items", "1", "parts", "1", "n"), 15),
        (("items", "2", "name"), 18),
        (("items", "2", "steps"), 19),
        (("items", "2", "steps", "0", "w"), 20),
        (("items", "2", "steps", "1"), 22),
        (("items", "2", "steps", "2", "w"), 22),
        (("items", "2", "steps", "3"), 23),
        (("items", "2", "steps", "3", "1"), 24),
        # a missing key of the N-th block falls back to that block's header
        (("items", "2", "missing"), 17),
        (("items", "1", "parts", "1", "missing"), 14),
        (("other", "0", "name"), 28),
        # without the index: the first occurrence
        (("items", "name"), 2),
        (("items", "parts", "n"), 9),
        # an index past the last element falls back to the array
        (("items", "3", "name"), 1),
    ],
)
def test_locator_arrays_of_tables(path: tuple[str, ...], line: int | None) -> None:
    assert KeyLocator(ARRAY_TEXT).line_of(path) == line


# --- analysis, canary, hooks, notifications ------------------------------------------------------

ROLLOUT_EXAMPLE = """\
[app]
name = "shop"

[services.web]
command = "serve {port}"
port = 8080
preview_port = 8081

[rollout]
strategy = "canary"
bake = "60s"
on_inconclusive = "wait"
steps = [
  { weight = 10, pause = "30s" },
  { weight = 50, pause = "manual" },
  { weight = 100 },
]
[rollout.sticky]
cookie = "conveyor_canary"      # or: header = "X-User-Id"

[[rollout.analysis]]
metric = "error_rate"
max = 0.01
interval = "1s"
window = "10s"
min_requests = 50
failure_limit = 2

[[rollout.analysis]]
metric = "prometheus"
query = 'sum(rate(http_requests_total{status=~"5..",version="{version}"}[1m])) / sum(rate(http_requests_total{version="{version}"}[1m]))'
url = "http://127.0.0.1:9090"
max = 0.01

[[rollout.analysis]]
metric = "http"
url = "http://127.0.0.1:{port}/internal/selfcheck"

[hooks]
smoke = "python3 smoke.py"
post_deploy = { command = "./notify.sh", timeout = "30s" }

[[notifications]]
url = "https://hooks.slack.com/services/T000/B000/XXXX"
events = ["failed", "rolled_back"]

[environments.dev.rollout]
on_inconclusive = "pass"
[environments.production.hooks]
pre_deploy = "./check-freeze.sh"
"""


def test_rollout_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ROLLOUT_EXAMPLE))
    rollout = config.rollout
    assert (rollout.strategy, rollout.bake, rollout.auto_promote) == ("canary", 60.0, True)
    assert rollout.on_inconclusive == "wait"
    assert rollout.steps == [
        CanaryStep(weight=10, pause=30.0),
        CanaryStep(weight=50, pause="manual"),
        CanaryStep(weight=100),
    ]
    assert rollout.steps[2].pause is None
    assert rollout.sticky == StickyConfig(cookie="conveyor_canary", header=None)
    error_rate, prometheus, http = rollout.checks()
    assert error_rate == DEFAULT_ANALYSIS[0]
    assert prometheus.query is not None and '{version}"}[1m]))' in prometheus.query
    assert (prometheus.url, prometheus.max, prometheus.timeout) == (
        "http://127.0.0.1:9090",
        0.01,
        5.0,
    )
    assert (http.url, http.max, http.min, http.field) == (
        "http://127.0.0.1:{port}/internal/selfcheck",
        None,
        None,
        None,
    )
    assert [c.display() for c in rollout.checks()] == [
        "error_rate",
        "prometheus",
        "http http://127.0.0.1:{port}/internal/selfcheck",
    ]
    assert config.hooks == HooksConfig(
        smoke=HookConfig(command="python3 smoke.py", timeout=60.0),
        post_deploy=HookConfig(command="./notify.sh", timeout=30.0),
    )
    assert config.notifications == [
        NotificationConfig(
            url="https://hooks.slack.com/services/T000/B000/XXXX",
            events=["failed", "rolled_back"],
        )
    ]
    assert config.services["web"].preview_port == 8081

    assert list(config.environments) == ["dev", "production"]
    dev = config.environment("dev")
    assert dev.rollout == rollout.model_copy(update={"on_inconclusive": "pass"})
    assert dev.hooks == config.hooks
    production = config.environment("production")
    assert production.rollout == rollout
    assert production.hooks == config.hooks.model_copy(
        update={"pre_deploy": HookConfig(command="./check-freeze.sh")}
    )
    assert production.notifications == config.notifications
    assert production.services["web"].preview_port == 8081


def test_rollout_defaults() -> None:
    rollout = RolloutConfig()
    assert (rollout.strategy, rollout.bake, rollout.auto_promote) == ("bluegreen", 60.0, True)
    assert (rollout.on_inconclusive, rollout.steps, rollout.analysis) == (None, [], [])
    # Unset, inconclusive analysis passes a blue/green bake ("live, unverified") and a canary waits.
    assert rollout.inconclusive_policy() == "pass"
    assert (rollout.progress_deadline, rollout.on_deadline) == (600.0, "abort")
    assert rollout.sticky == StickyConfig(cookie="conveyor_canary", header=None)
    assert rollout.checks() == [
        AnalysisCheck(
            metric="error_rate",
            max=0.01,
            min_requests=50,
            interval=1.0,
            window=10.0,
            failure_limit=2,
        )
    ]
    # checks() hands out a fresh list: the default cannot be changed through it.
    rollout.checks().clear()
    assert len(rollout.checks()) == 1
    configured = [AnalysisCheck(metric="latency_p99_ms", max=300)]
    assert RolloutConfig(analysis=configured).checks() == configured


def test_analysis_check_defaults_and_display() -> None:
    check = AnalysisCheck(metric="latency_p99_ms", max=250)
    assert (check.interval, check.window, check.min_requests) == (1.0, 10.0, 50)
    assert (check.failure_limit, check.timeout) == (2, 5.0)
    assert (check.query, check.url, check.command, check.field, check.name) == (None,) * 5
    assert check.display() == "latency_p99_ms"
    assert AnalysisCheck(metric="error_rate", min=0.0).display() == "error_rate"
    prometheus = AnalysisCheck(metric="prometheus", query="up", min=1)
    assert (prometheus.url, prometheus.display()) == (DEFAULT_PROMETHEUS_URL, "prometheus")
    assert AnalysisCheck(metric="command", command="./check").display() == "command"
    assert AnalysisCheck(metric="http", url="http://127.0.0.1/x").display() == (
        "http http://127.0.0.1/x"
    )
    named = AnalysisCheck(metric="command", command="./check", name="queue depth")
    assert named.display() == "queue depth"


def test_analysis_field_measures_a_number_and_needs_a_threshold() -> None:
    check = AnalysisCheck(
        metric="http", url="https://127.0.0.1:{port}/stats", field="queue.depth", max=100
    )
    assert check.field == "queue.depth"
    with pytest.raises(ValidationError, match="needs a threshold"):
        AnalysisCheck(metric="command", command="./stats", field="depth")
    with pytest.raises(ValidationError, match="dotted path"):
        AnalysisCheck(metric="command", command="./stats", field="a..b", max=1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('metric = "error_rate"\nmax = 0.1\ncommand = "x"', "command is not used"),
        ('metric = "error_rate"\nmax = 0.1\nurl = "http://127.0.0.1/"', "url is not used"),
        ('metric = "prometheus"\nquery = "up"\nmax = 1\nurl = "ftp://x"', "http:// or https://"),
        ('metric = "http"\nurl = "http://127.0.0.1/{colour}"', "did you mean {color}?"),
        ('metric = "prometheus"\nquery = "  "\nmax = 1', "needs a non-empty query"),
        ('metric = "latency_p99_ms"\nmax = 1\nname = ""', "name must not be empty"),
        ('metric = "latency_p99_ms"\nmax = 1\nfailure_limit = 0', "must be at least 1"),
        ('metric = "latency_p99_ms"\nmax = 1\nwindow = "0s"', "must be greater than 0"),
        ('metric = "latency_p99_ms"\nmax = 1\nmin_requests = -1', "must be 0 or more"),
        ('metric = "latency_p99_ms"\nmax = "1"', "expected a number"),
        ('metric = "cpu"\nmax = 1', "unknown metric 'cpu' (metrics: error_rate, "),
    ],
)
def test_analysis_errors(tmp_path: Path, body: str, message: str) -> None:
    text = '[app]\nname = "a"\n[services.web]\ncommand = "s {port}"\nport = 80\n'
    text += f"[[rollout.analysis]]\n{body}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in caught.value.message
    assert caught.value.key.startswith("rollout.analysis.0")
    assert caught.value.line is not None and caught.value.line >= 6


def test_canary_pause_forms() -> None:
    assert CanaryStep.model_validate({"weight": 5, "pause": "1m30s"}).pause == 90.0
    assert CanaryStep(weight=5, pause=2).pause == 2.0
    assert CanaryStep(weight=5, pause="manual").pause == "manual"
    assert CanaryStep(weight=5, pause=None).pause is None
    with pytest.raises(ValidationError, match='duration like "30s" or "manual"'):
        CanaryStep.model_validate({"weight": 5, "pause": "Manual"})
    with pytest.raises(ValidationError, match="between 1 and 100"):
        CanaryStep(weight=101)


def test_single_step_canary() -> None:
    rollout = RolloutConfig(strategy="canary", steps=[CanaryStep(weight=100)])
    assert [s.weight for s in rollout.steps] == [100]
    with pytest.raises(ValidationError, match="must increase: 50 after 50"):
        RolloutConfig(strategy="canary", steps=[CanaryStep(weight=50), CanaryStep(weight=50)])


def test_sticky_header_replaces_the_cookie() -> None:
    sticky = StickyConfig(header="X-User-Id")
    assert (sticky.cookie, sticky.header) == (None, "X-User-Id")
    assert StickyConfig.model_validate(sticky.model_dump()) == sticky
    with pytest.raises(ValidationError, match="not both"):
        StickyConfig(cookie="c", header="X-User-Id")
    # Not expressible in TOML (there is no null), but code can try it.
    with pytest.raises(ValidationError, match="set a cookie or a header"):
        StickyConfig(cookie=None)
    with pytest.raises(ValidationError, match="invalid header name"):
        StickyConfig(header="X User")
    with pytest.raises(ValidationError, match="invalid cookie name"):
        StickyConfig(cookie="")


def test_sticky_override_replaces_the_base_table(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[app]\nname = "a"\n[services.web]\ncommand = "s {port}"\nport = 80\n'
            '[rollout]\nstrategy = "canary"\nsteps = [{ weight = 100 }]\n'
            '[rollout.sticky]\ncookie = "cv"\n'
            "[environments.dev]\n"
            '[environments.api.rollout.sticky]\nheader = "X-User-Id"\n',
        )
    )
    assert config.environment("dev").rollout.sticky == StickyConfig(cookie="cv")
    assert config.environment("api").rollout.sticky == StickyConfig(header="X-User-Id")


def test_rollout_override_replaces_lists(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[app]\nname = "a"\n[services.web]\ncommand = "s {port}"\nport = 80\n'
            '[rollout]\nstrategy = "canary"\nsteps = [{ weight = 10 }, { weight = 100 }]\n'
            '[[rollout.analysis]]\nmetric = "latency_p99_ms"\nmax = 300\n'
            "[environments.dev]\n"
            "[environments.prod.rollout]\n"
            'steps = [{ weight = 1, pause = "10m" }, { weight = 20 }, { weight = 100 }]\n'
            'analysis = [{ metric = "error_rate", max = 0.001 }]\n'
            "[environments.quick.rollout]\n"
            'strategy = "bluegreen"\nsteps = []\nbake = 0\n',
        )
    )
    prod = config.environment("prod").rollout
    assert [s.weight for s in prod.steps] == [1, 20, 100]
    assert [(c.metric, c.max) for c in prod.checks()] == [("error_rate", 0.001)]
    quick = config.environment("quick").rollout
    assert (quick.strategy, quick.steps, quick.bake) == ("bluegreen", [], 0.0)
    assert config.environment("dev").rollout == config.rollout


def test_hooks(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[app]\nname = "a"\n[services.web]\ncommand = "s {port}"\nport = 80\n'
            "[hooks]\n"
            'pre_deploy = "./check.sh"\n'
            'smoke = { command = "python3 smoke.py", timeout = "2m" }\n'
            'post_switch = "a"\npost_deploy = "b"\non_rollback = "c"\n'
            "[environments.dev]\n"
            '[environments.prod.hooks]\nsmoke = { timeout = "5m" }\non_rollback = "page"\n',
        )
    )
    hooks = config.hooks
    assert hooks.pre_deploy == HookConfig(command="./check.sh", timeout=60.0)
    assert hooks.smoke == HookConfig(command="python3 smoke.py", timeout=120.0)
    assert [h.command for h in (hooks.post_switch, hooks.post_deploy, hooks.on_rollback) if h] == [
        "a",
        "b",
        "c",
    ]
    prod = config.environment("prod").hooks
    # Deep merge: the override's timeout, the base's command.
    assert prod.smoke == HookConfig(command="python3 smoke.py", timeout=300.0)
    assert prod.on_rollback == HookConfig(command="page")
    assert prod.pre_deploy == hooks.pre_deploy
    assert config.environment("dev").hooks == hooks
    assert HookConfig.model_validate("echo hi") == HookConfig(command="echo hi")
    assert HooksConfig() == HooksConfig(
        pre_deploy=None, smoke=None, post_switch=None, post_deploy=None, on_rollback=None
    )


def test_hook_override_without_command_in_base(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            write(
                tmp_path,
                '[app]\nname = "a"\n[services.web]\ncommand = "s {port}"\nport = 80\n'
                '[environments.prod.hooks]\nsmoke = { timeout = "5m" }\n',
            )
        )
    assert (caught.value.line, caught.value.key) == (7, "environments.prod.hooks.smoke.command")
    assert caught.value.message == "missing required key"


def test_notifications(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[app]\nname = "a"\n[services.web]\ncommand = "s {port}"\nport = 80\n'
            '[[notifications]]\nurl = "http://127.0.0.1:9/hook"\n'
            '[[notifications]]\nurl = "https://chat.invalid/x"\nformat = "slack"\n'
            'events = ["step"]\ntimeout = "1s"\nretries = 0\n',
        )
    )
    first, second = config.notifications
    assert first.events == list(EVENTS)
    assert EVENTS == (
        "started",
        "switched",
        "step",
        "succeeded",
        "failed",
        "rolled_back",
        "aborted",
        "crash_loop",
        "break_glass",
    )
    assert (first.format, first.timeout, first.retries) == ("auto", 5.0, 3)
    assert (second.format, second.events, second.timeout, second.retries) == (
        "slack",
        ["step"],
        1.0,
        0,
    )
    assert config.environment("dev").notifications == config.notifications
    with pytest.raises(ValidationError, match="events must not be empty"):
        NotificationConfig(url="http://127.0.0.1/", events=[])
    with pytest.raises(ValidationError, match="must be 0 or more"):
        NotificationConfig(url="http://127.0.0.1/", retries=-1)
    with pytest.raises(ValidationError, match="http:// or https://"):
        NotificationConfig(url="https://")


def test_preview_port(tmp_path: Path) -> None:
    assert ServiceConfig(command="s", port=80).preview_port is None
    assert ServiceConfig(command="s", port=80, preview_port=81).preview_port == 81
    with pytest.raises(ValidationError, match="between 1 and 65535"):
        ServiceConfig(command="s", port=80, preview_port=0)
    config = load_config(
        write(
            tmp_path,
            '[app]\nname = "a"\n'
            '[services.web]\ncommand = "s {port}"\nport = 80\npreview_port = 81\n'
            '[services.api]\ncommand = "s {port}"\nport = 81\nlisten = "127.0.0.2"\n'
            "[environments.dev]\n"
            "[environments.alt.services.web]\npreview_port = 82\n",
        )
    )
    assert config.environment("alt").services["web"].preview_port == 82
    # A preview port clashing with another service's port, introduced by an override.
    with pytest.raises(ConfigError) as caught:
        load_config(
            write(
                tmp_path,
                '[app]\nname = "a"\n'
                '[services.web]\ncommand = "s {port}"\nport = 80\n'
                '[services.api]\ncommand = "s {port}"\nport = 81\n'
                "[environments.alt.services.api]\npreview_port = 80\n",
            )
        )
    assert (caught.value.line, caught.value.key) == (
        10,
        "environments.alt.services.api.preview_port",
    )
    assert "already used by service 'web' in environment 'alt'" in caught.value.message


# --- docs/configuration.md -----------------------------------------------------------------------

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def _doc_examples() -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", DOCS.read_text(), re.MULTILINE | re.DOTALL)


def test_docs_have_examples() -> None:
    assert len(_doc_examples()) >= 12


@pytest.mark.parametrize("index", range(len(_doc_examples())))
def test_docs_example_loads(tmp_path: Path, index: int) -> None:
    # Most examples show one table: complete them with the smallest valid file.
    example = _doc_examples()[index]
    prefix = "" if "[app]" in example else '[app]\nname = "shop"\n'
    if "[services.web]" not in example:
        prefix += '[services.web]\ncommand = "serve {port}"\nport = 8080\n'
    config = load_config(write(tmp_path, prefix + example))
    for name in config.environments:
        config.environment(name)
