"""The Kubernetes objects conveyor builds (kube/manifests.py): each one validated offline against
the official schemas (Kubernetes 1.30 OpenAPI, Gateway API v1.2.1 HTTPRoute), and what they say."""

from __future__ import annotations

import base64
import copy
import json
import textwrap
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from kube_schemas import validate

from conveyor.config import HealthConfig, load_config
from conveyor.kube import manifests as m

SECRET = "s3cr3t-value-never-printed"


def spec(**changes: object) -> m.ColorSpec:
    base = m.ColorSpec(
        app="shop",
        environment="production",
        service="web",
        color="green",
        version="v2.1+build.7",
        namespace="shop",
        image="registry.example/shop-web:v2.1",
        command="gunicorn --bind 0.0.0.0:{port} app:app",
        web=True,
        container_port=8000,
        replicas=3,
        resources={"cpu": "250m", "memory": "256Mi"},
        health=HealthConfig(path="/ready", interval=0.5, timeout=2.0, healthy_threshold=2),
        stop_timeout=20.0,
        env={"LOG_LEVEL": "info", "DATABASE_URL": SECRET},
        secrets=("DATABASE_URL",),
    )
    return m.ColorSpec(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_a_web_color_validates_and_says_what_the_configuration_says() -> None:
    objects = m.color_objects(spec(), {"DATABASE_URL": SECRET})
    for obj in objects:
        validate(obj)
    secret, deployment, service = objects
    assert [o["kind"] for o in objects] == ["Secret", "Deployment", "Service"]
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "web-green"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["conveyor.dev/color"] == "green"
    assert labels["conveyor.dev/version"] == "v2.1-build.7"  # a label value; exact in annotation
    assert deployment["metadata"]["annotations"]["conveyor.dev/version"] == "v2.1+build.7"
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert "conveyor.dev/version" not in service["spec"]["selector"]
    assert deployment["spec"]["replicas"] == 3
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c", "gunicorn --bind 0.0.0.0:8000 app:app"]
    assert container["resources"]["limits"] == {"cpu": "250m", "memory": "256Mi"}
    probe = container["readinessProbe"]
    assert probe["httpGet"] == {"path": "/ready", "port": 8000}
    assert (probe["periodSeconds"], probe["successThreshold"]) == (1, 2)
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 20
    env = {e["name"]: e for e in container["env"]}
    assert env["PORT"]["value"] == "8000"
    assert env["DATABASE_URL"] == {
        "name": "DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "web-green-secrets", "key": "DATABASE_URL"}},
    }
    assert SECRET not in json.dumps(deployment)
    assert base64.b64decode(secret["data"]["DATABASE_URL"]).decode() == SECRET


def test_a_worker_has_no_service_probe_or_port() -> None:
    objects = m.color_objects(spec(web=False, service="jobs", secrets=(), command=None), None)
    assert [o["kind"] for o in objects] == ["Deployment"]
    validate(objects[0])
    container = objects[0]["spec"]["template"]["spec"]["containers"][0]
    assert "readinessProbe" not in container and "ports" not in container
    assert "command" not in container  # the image's own CMD
    assert "PORT" not in {e["name"] for e in container["env"]}


def test_a_secret_without_values_names_its_keys_only() -> None:
    obj = m.secret(spec(), None)
    validate(obj)
    assert "data" not in obj and "stringData" not in obj
    assert obj["metadata"]["annotations"]["conveyor.dev/secret-keys"] == "DATABASE_URL"


ROUTE = m.Route("shop", "production", "web", "shop", 80, 8000, 8081, "infra/public")


def test_services_select_one_color_and_the_http_route_weighs_the_color_services() -> None:
    live, preview = m.service(ROUTE, "blue"), m.service(ROUTE, "green", preview=True)
    route = m.http_route(ROUTE, {"blue": 90, "green": 10})
    for obj in (live, preview, route):
        validate(obj)
    assert live["metadata"]["name"] == "web"
    assert live["spec"]["selector"]["conveyor.dev/color"] == "blue"
    assert preview["metadata"]["name"] == "web-preview"
    assert preview["spec"]["selector"]["conveyor.dev/color"] == "green"
    assert preview["spec"]["ports"][0]["port"] == 8081
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "public",
            "namespace": "infra",
        }
    ]
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("web-blue", 90), ("web-green", 10)]


def test_the_schemas_do_refuse_a_wrong_object() -> None:
    # The validation above could not pass everything: a misspelt field and a negative weight fail.
    bad = m.deployment(spec())
    bad["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)
    route = m.http_route(ROUTE, {"blue": 100})
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_names_that_kubernetes_refuses_are_said_with_the_key() -> None:
    with pytest.raises(m.ManifestError, match=r"services\.api_v2: the object name"):
        m.color_name("api_v2", "blue")
    with pytest.raises(m.ManifestError, match=r"runtime\.gateway"):
        m.http_route(m.Route("shop", "dev", "web", "shop", 80, 8000), {"blue": 100})
    with pytest.raises(m.ManifestError, match=r"services\.web\.image is needed"):
        m.image_for({"image": None}, "v1", "web")
    with pytest.raises(m.ManifestError, match="cannot be a key"):
        m.deployment(spec(secrets=("BAD KEY",)))


@pytest.mark.parametrize("raw", ["v1", "2024-06-01+sha.9f3e", "-x-", "a" * 80, "ü/ber", "1.0_"])
def test_label_values_are_valid(raw: str) -> None:
    value = m.label_value(raw)
    assert len(value) <= 63
    validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"k": value}}}
    )


def test_the_agents_machine_stays_out_of_the_container() -> None:
    machine = {"PATH": "/usr/bin", "HOME": "/home/ops", "LC_ALL": "C", "TZ": "UTC"}
    env = {
        "PATH": "/usr/bin",
        "HOME": "/home/ops",
        "LC_ALL": "C",
        "TZ": "Europe/Paris",  # set by the configuration: kept
        "CONVEYOR_PROJECT_ID": "abc",
        "CONVEYOR_INSTANCE_ID": "def",
        "CONVEYOR_COLOR": "blue",
        "PORT": "0",
    }
    assert m.container_env_of(env, machine) == {"TZ": "Europe/Paris", "CONVEYOR_COLOR": "blue"}


def test_render_of_an_environment_validates(tmp_path: Path) -> None:
    (tmp_path / "conveyor.toml").write_text(
        textwrap.dedent(
            """
            [app]
            name = "shop"
            [runtime]
            kind = "kubernetes"
            namespace = "shop"
            gateway = "public"
            [router]
            kind = "gateway-api"
            [rollout]
            strategy = "canary"
            steps = [{ weight = 10 }, { weight = 100 }]
            analysis = [{ metric = "prometheus", query = "vector(0)", max = 1 }]
            [services.web]
            image = "shop-web"
            build = "."
            port = 80
            preview_port = 8081
            container_port = 8000
            replicas = 2
            env = { LOG_LEVEL = "info" }
            [services.jobs]
            kind = "worker"
            image = "shop-web"
            build = "."
            command = "python -m jobs"
            """
        )
    )
    cfg = load_config(tmp_path / "conveyor.toml")
    objects = m.render(cfg.environment("dev"), "v3", "blue", "gateway-api", {"web": ["API_KEY"]})
    for obj in objects:
        validate(obj)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert kinds == [
        ("Secret", "web-blue-secrets"),
        ("Deployment", "web-blue"),
        ("Service", "web-blue"),
        ("Service", "web"),
        ("Service", "web-preview"),
        ("HTTPRoute", "web"),
        ("Deployment", "jobs-blue"),
    ]
    assert objects[1]["spec"]["template"]["spec"]["containers"][0]["image"] == "shop-web:v3"
