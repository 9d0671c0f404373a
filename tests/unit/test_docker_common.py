"""The Docker runtimes' pure helpers: names, resource quantities, exit details, commands, labels."""

from __future__ import annotations

import pytest

from conveyor.markers import INSTANCE_ID, PROJECT_ID
from conveyor.runtimes import docker_common as dc
from conveyor.runtimes.base import Handle, RuntimeStartError, Workload


def workload(**changes: object) -> Workload:
    base: dict[str, object] = {
        "app": "shop",
        "environment": "production",
        "service": "web",
        "color": "blue",
        "version": "v1",
        "artifact": "/releases/trees/sha256-abc",
        "command": "serve --port {port}",
        "port": 8000,
        "env": {PROJECT_ID: "p1", INSTANCE_ID: "0123456789ab", "TOKEN": "secret"},
        "options": {"image": "shop-web", "build": "."},
    }
    base.update(changes)
    return Workload(**base)  # type: ignore[arg-type]


def test_names_fit_a_dns_label_and_keep_the_instance() -> None:
    assert dc.object_name(workload()) == "conveyor-shop-production-web-blue-0123456789ab"
    long = dc.object_name(workload(app="A_very_long_application.name" * 4))
    assert len(long) <= 63 and long.endswith("-0123456789ab")
    assert all(c.isalnum() or c == "-" for c in long) and long == long.lower()


def test_quantities_as_docker_limits() -> None:
    assert dc.limits({"cpu": "250m", "memory": "256Mi"}) == {
        "nano_cpus": 250_000_000,
        "mem_limit": 256 * 2**20,
    }
    assert dc.limits({"cpu": "1.5", "memory": "1G"}) == {
        "nano_cpus": 1_500_000_000,
        "mem_limit": 10**9,
    }
    assert dc.limits({}) == {}
    for bad in ({"cpu": "lots"}, {"cpu": "0"}, {"memory": "12 MB"}):
        with pytest.raises(RuntimeStartError):
            dc.limits(bad)


def test_exit_details_read_like_the_local_runtimes() -> None:
    assert dc.exit_detail(3) == "exited with code 3"
    assert dc.exit_detail(137) == "killed by SIGKILL"
    assert dc.exit_detail(143) == "killed by SIGTERM"
    assert dc.exit_detail(137, oom=True).startswith("killed for using too much memory")


def test_the_command_is_split_into_words_with_the_port() -> None:
    assert dc.command_of(workload(command="serve --port {port} --name 'a b'"), 9000) == [
        "serve",
        "--port",
        "9000",
        "--name",
        "a b",
    ]
    assert dc.command_of(workload(command=None), 9000) is None
    with pytest.raises(RuntimeStartError, match="cannot split"):
        dc.command_of(workload(command="serve 'unclosed"), 1)


def test_markers_travel_as_labels_not_in_the_environment() -> None:
    w = workload()
    env = dc.container_env(w, 8000)
    assert PROJECT_ID not in env and INSTANCE_ID not in env
    assert env["PORT"] == "8000" and env["TOKEN"] == "secret"
    labels = dc.workload_labels(w)
    assert (
        labels["io.conveyor.project"] == "p1" and labels["io.conveyor.instance"] == "0123456789ab"
    )
    assert "secret" not in labels.values()


def test_a_handle_matches_only_its_own_labels() -> None:
    w = workload()
    h = Handle("docker", {"id": "c1", **dc.ref_of(w)}, (), 0.0)
    labels = dc.workload_labels(w)
    assert dc.labels_match(h, labels)
    assert not dc.labels_match(h, {**labels, "io.conveyor.instance": "other"})
    assert not dc.labels_match(h, {})
    # A handle that names no project or start cannot be verified: never ours.
    assert not dc.labels_match(Handle("docker", {"id": "c1"}, (), 0.0), labels)


def test_the_image_is_the_recorded_one_or_a_clear_error() -> None:
    recorded = workload(options={"image": "shop-web", "build": ".", "image_id": "sha256:ab"})
    assert dc.image_of(recorded).ref == "sha256:ab"
    assert dc.image_of(workload()).ref == "shop-web:v1"
    with pytest.raises(RuntimeStartError, match="no image recorded"):
        dc.image_of(workload(options={"image": "nginx:1.25"}))
    with pytest.raises(RuntimeStartError, match="has no image"):
        dc.image_of(workload(options={}))


def test_stop_signals_are_named_like_docker_names_them() -> None:
    assert dc.stop_signal(workload(options={"stop_signal": "usr1"})) == "SIGUSR1"
    assert dc.stop_signal(workload(options={"stop_signal": "SIGQUIT"})) == "SIGQUIT"
    assert dc.stop_signal(workload()) is None
    with pytest.raises(RuntimeStartError, match="unknown stop_signal"):
        dc.stop_signal(workload(options={"stop_signal": "SIGNOPE"}))


def test_docker_times() -> None:
    assert dc.parse_time("0001-01-01T00:00:00Z") is None
    assert dc.parse_time("1970-01-01T00:00:01.123456789Z") == pytest.approx(1.123456)
    assert dc.parse_time("1970-01-01T01:00:02+01:00") == 2.0
