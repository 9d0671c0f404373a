"""The pure parts of the HAProxy router: configuration, runtime-API commands, `show stat`."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conveyor.config import ConfigError, load_config
from conveyor.metrics.builtin import ProxyWindow
from conveyor.routers import haproxy_api as api
from conveyor.routers.base import Backend, Split
from conveyor.routers.haproxy import HaproxyRouter
from conveyor.routers.kinds import LATENCY, ROUTER_FEATURES
from conveyor.routers.registry import make_router

# Captured from HAProxy 2.6 after one 200 and one 500 through server blue.
STAT = (Path(__file__).parent / "data" / "haproxy_show_stat.csv").read_text()


def split(*backends: Backend, **settings: object) -> Split:
    return Split("dev/web", "127.0.0.1", 8080, backends, options={"haproxy": settings})


def test_percent_to_weight() -> None:
    assert [api.weight(p) for p in (0, 1, 10, 50, 90, 100)] == [0, 3, 26, 128, 230, 256]
    assert api.weight(-5) == 0 and api.weight(1000) == 256


def test_configuration_declares_both_colors_and_points_the_live_one() -> None:
    text = api.config_text(
        split(Backend("green", "127.0.0.1", 4001, 10), Backend("blue", "127.0.0.1", 4000, 90)),
        "/run/x/stats.sock",
    )
    assert "    bind 127.0.0.1:8080\n" in text
    assert "    server blue 127.0.0.1:4000 weight 230\n" in text
    assert "    server green 127.0.0.1:4001 weight 26\n" in text
    assert "stats socket /run/x/stats.sock mode 600 level admin expose-fd listeners" in text
    assert "check" not in text.split("backend be", 1)[1]  # conveyor checks health itself
    only = api.config_text(split(Backend("blue", "127.0.0.1", 4000)), "/s")
    assert "    server green 127.0.0.1:1 weight 0\n" in only  # parked, never chosen


def test_settings_fill_the_timeouts_and_an_ipv6_listen_address_is_bracketed() -> None:
    s = Split(
        "dev/web",
        "::1",
        8080,
        (Backend("blue", "::1", 4000),),
        options={"haproxy": {"server_timeout": 1.5, "maxconn": 10}},
    )
    text = api.config_text(s, "/s")
    assert "bind [::1]:8080" in text and "server blue [::1]:4000" in text
    assert "timeout server 1500ms" in text and "maxconn 10" in text
    assert "timeout connect 5000ms" in text  # the default


def test_commands_bring_the_new_colors_up_before_draining_the_old() -> None:
    cmds = api.commands(split(Backend("green", "127.0.0.1", 4001)), ("blue", "green"))
    assert cmds == [
        "set server be/green addr 127.0.0.1 port 4001",
        "set server be/green weight 256",
        "set server be/green state ready",
        "set server be/blue state drain",
    ]
    canary = api.commands(
        split(Backend("green", "h", 2, 10), Backend("blue", "h", 1, 90)), ("blue", "green")
    )
    assert "set server be/green weight 26" in canary and "set server be/blue weight 230" in canary
    assert not [c for c in canary if c.endswith("drain")]
    # A color at weight 0 in a split takes no new request: it drains.
    done = api.commands(
        split(Backend("green", "h", 2, 100), Backend("blue", "h", 1, 0)), ("blue", "green")
    )
    assert done[-1] == "set server be/blue state drain"


def test_refusals_in_the_answer_to_joined_commands() -> None:
    # What HAProxy 2.6 answered to five commands joined by ";" (two refused).
    answer = (
        "no need to change the addr, port changed from '1' to '7' by 'stats socket command'\n\n"
        "\nNo such server.\n\n\nAbsolute weight can only be between 0 and 256 inclusive.\n\n"
    )
    assert api.refusals(answer) == [
        "No such server.",
        "Absolute weight can only be between 0 and 256 inclusive.",
    ]
    assert api.refusals("\n\n\nIP changed from '127.0.0.2' to '127.0.0.1'\n\n") == []


def test_show_stat_becomes_conveyors_counters() -> None:
    rows = api.server_rows(api.parse_stat(STAT))
    assert set(rows) == {"blue", "green"}  # not FRONTEND/BACKEND, not the frontend's rows
    blue = api.color_counters(api.raw_counters(rows["blue"]), api.inflight(rows["blue"]))
    assert blue["requests"] == 2
    assert blue["responses"]["2xx"] == 1 and blue["responses"]["5xx"] == 1
    assert blue["upstream_errors"] == 0 and blue["inflight"] == 0
    assert blue["latency_buckets"] == []
    with pytest.raises(api.StatError):
        api.parse_stat("Unknown command.\n")


def test_counters_of_a_replaced_process_are_added_so_the_window_sees_no_reset() -> None:
    rows = api.server_rows(api.parse_stat(STAT))
    before = api.raw_counters(rows["blue"])
    window = ProxyWindow(keep=10.0)
    window.observe(api.color_counters(before, 0), now=1.0)
    # The new process starts from zero; the router reports base + new.
    fresh = dict.fromkeys(before, 0) | {"stot": 3, "hrsp_2xx": 3}
    window.observe(api.color_counters(api.add(before, fresh), 0), now=2.0)
    assert window.error_rate(10.0, 2.0) == (0.0, 3)
    # Without the base the counters went back: the window would start over.
    window.observe(api.color_counters(fresh, 0), now=3.0)
    assert len(window.snapshots) == 1


def test_the_router_is_made_by_name_and_declares_no_latency(tmp_path: Path) -> None:
    from conveyor.paths import Paths

    router = make_router("haproxy", Paths(tmp_path))
    assert isinstance(router, HaproxyRouter)
    assert router.features == ROUTER_FEATURES["haproxy"] and LATENCY not in router.features


BASE = """\
[app]
name = "shop"

[services.web]
command = "serve --port {port}"
port = 8080

[router]
kind = "haproxy"
"""


def test_latency_p99_is_refused_with_haproxy_at_load_time(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(BASE + '\n[[rollout.analysis]]\nmetric = "latency_p99_ms"\nmax = 200\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:12: rollout.analysis.0.metric: latency_p99_ms")
    assert "which the 'haproxy' router cannot do" in str(err.value)
    path.write_text(BASE + '\n[[rollout.analysis]]\nmetric = "error_rate"\nmax = 0.01\n')
    load_config(path)  # error_rate comes from HAProxy's counters


def test_haproxy_settings_reach_the_split_options(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(BASE + '\n[router.haproxy]\nmaxconn = 100\nserver_timeout = "2s"\n')
    env = load_config(path).environment("dev")
    options = HaproxyRouter(tmp_path, tmp_path / "log").options(env)
    assert api.settings(options)["maxconn"] == 100
    assert api.settings(options)["server_timeout"] == 2.0
    path.write_text(BASE + "\n[router.haproxy]\nmaxconn = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:12: router.haproxy.maxconn" in str(err.value)


def test_a_stats_socket_path_too_long_for_haproxy_moves_to_a_private_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.routers.base import RouterError
    from conveyor.routers.haproxy import MAX_SOCKET_PATH, socket_path

    runtime = Path(tempfile.mkdtemp(prefix="cvx", dir="/tmp"))  # short, as /run/user/<uid> is
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert socket_path(Path("/srv/shop/.conveyor/haproxy/0123abcd")) == Path(
        "/srv/shop/.conveyor/haproxy/0123abcd/stats.sock"
    )
    deep = tmp_path / ("d" * 100) / "haproxy" / "0123abcd"
    path = socket_path(deep)
    assert path.parent == runtime / f"conveyor-{os.getuid()}"
    assert len(str(path)) <= MAX_SOCKET_PATH and path == socket_path(deep)  # stable
    assert path != socket_path(deep.with_name("4567ef01"))
    assert path.parent.stat().st_mode & 0o777 == 0o700
    path.parent.chmod(0o770)  # a directory others may enter is refused
    try:
        with pytest.raises(RouterError, match="mode 0700"):
            socket_path(deep)
    finally:
        shutil.rmtree(runtime)
