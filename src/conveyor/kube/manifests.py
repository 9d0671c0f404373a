"""The Kubernetes objects conveyor applies, as plain dicts: pure, no I/O.

One color of one service is a Deployment `<service>-<color>` and a Service of the same name that
selects only that color (the color's stable in-cluster address, and what an HTTPRoute weighs);
its secret values go in a Secret `<service>-<color>-secrets` read through secretKeyRef, never
inline. The Service named after the service selects the active color, `<service>-preview` the
new one; with the Gateway API, an HTTPRoute `<service>` weighs the color Services.

Every object carries the labels below, so that conveyor finds what it owns, Prometheus can tell
colors apart, and one environment never takes over another's objects in a shared namespace.
The runtime, the routers and `conveyor render` all build their objects here.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.config import HealthConfig, ResolvedEnvironment
from conveyor.environ import PASSTHROUGH
from conveyor.markers import INSTANCE_ID, PROJECT_ID

PREFIX = "conveyor.dev/"
MANAGED_BY = {"app.kubernetes.io/managed-by": "conveyor"}
APP, ENVIRONMENT, SERVICE, COLOR, VERSION = (
    PREFIX + k for k in ("app", "environment", "service", "color", "version")
)
START = PREFIX + "start"  # annotation: which start of a color this is (the runtime's handle)
SECRET_KEYS = PREFIX + "secret-keys"  # annotation: the names a Secret holds, never the values
DEFAULT_CONTAINER_PORT = 8080
GATEWAY_GROUP = "gateway.networking.k8s.io"

# A Service name is a DNS-1035 label; Deployment and Secret names are DNS-1123 subdomains, which
# the stricter pattern satisfies too.
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
# Not the app's business inside a container: the agent's own machine and process markers.
_MARKERS = frozenset({PROJECT_ID, INSTANCE_ID})


class ManifestError(ValueError):
    """The configuration cannot be expressed as Kubernetes objects; the message says which key."""


@dataclass(frozen=True)
class ColorSpec:
    """Everything one color's objects are made of (from a Workload, or from the configuration)."""

    app: str
    environment: str
    service: str
    color: str
    version: str
    namespace: str
    image: str
    command: str | None
    web: bool
    container_port: int = DEFAULT_CONTAINER_PORT
    replicas: int = 1
    resources: Mapping[str, str] = field(default_factory=dict)
    health: HealthConfig = field(default_factory=HealthConfig)
    stop_timeout: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)  # plain values
    secrets: Collection[str] = ()  # names whose values live in the color's Secret
    start: str = ""  # the runtime's id of this start (none in rendered manifests)


# --- names and labels ----------------------------------------------------------------------------


def check_name(name: str, what: str) -> str:
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        raise ManifestError(
            f"{what} {name!r} is not a valid Kubernetes name: lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters"
        )
    return name


def color_name(service: str, color: str) -> str:
    """The color's Deployment and Service."""
    return check_name(f"{service}-{color}", f"services.{service}: the object name")


def preview_name(service: str) -> str:
    return check_name(f"{service}-preview", f"services.{service}: the object name")


def secret_name(service: str, color: str) -> str:
    return f"{color_name(service, color)}-secrets"


def label_value(value: str) -> str:
    """`value` as a label value (63 characters of [-A-Za-z0-9_.], alphanumeric at both ends);
    the exact value is kept in an annotation where it had to change."""
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "-", value)[:63].strip("-_.")
    assert _LABEL_VALUE.fullmatch(cleaned)
    return cleaned


def selector(app: str, environment: str, service: str, color: str | None = None) -> dict[str, str]:
    """The labels that pick one color's pods (every color's, without `color`)."""
    labels = {
        APP: label_value(app),
        ENVIRONMENT: label_value(environment),
        SERVICE: label_value(service),
    }
    if color is not None:
        labels[COLOR] = label_value(color)
    return labels


def owner_labels(app: str, environment: str, service: str) -> dict[str, str]:
    return {**MANAGED_BY, **selector(app, environment, service)}


def color_labels(spec: ColorSpec) -> dict[str, str]:
    return {
        **MANAGED_BY,
        **selector(spec.app, spec.environment, spec.service, spec.color),
        VERSION: label_value(spec.version),
    }


def _metadata(name: str, namespace: str, labels: Mapping[str, str], **annotations: str) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


# --- one color --------------------------------------------------------------------------------


def container_env(spec: ColorSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    secret_names = set(spec.secrets)
    for name in sorted(spec.env):
        if name in secret_names:
            continue
        env.append({"name": name, "value": spec.env[name]})
    for name in sorted(secret_names):
        if not _SECRET_KEY.fullmatch(name):
            raise ManifestError(
                f"secret {name!r} of services.{spec.service} cannot be a key of a Kubernetes "
                "Secret (letters, digits, '-', '_' and '.')"
            )
        ref = {"name": secret_name(spec.service, spec.color), "key": name}
        env.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
    if spec.web:
        env.append({"name": "PORT", "value": str(spec.container_port)})
    return env


def _seconds(value: float, least: int = 1) -> int:
    return max(least, math.ceil(value))


def deployment(spec: ColorSpec) -> dict[str, Any]:
    name = color_name(spec.service, spec.color)
    labels = color_labels(spec)
    annotations = {VERSION: spec.version}
    if spec.start:
        # On the pods too: a restart of the same version is a new start, with new pods.
        annotations[START] = spec.start
    container: dict[str, Any] = {
        "name": check_name(spec.service, "service"),
        "image": spec.image,
        "env": container_env(spec),
    }
    if spec.command is not None:
        command = spec.command.replace("{port}", str(spec.container_port))
        container["command"] = ["/bin/sh", "-c", command]
    if spec.resources:
        # Requests equal to limits: the pods are what the configuration says, never more
        # (Guaranteed QoS when both cpu and memory are set).
        container["resources"] = {"requests": dict(spec.resources), "limits": dict(spec.resources)}
    if spec.web:
        container["ports"] = [{"name": "http", "containerPort": spec.container_port}]
        h = spec.health
        container["readinessProbe"] = {
            "httpGet": {"path": h.path, "port": spec.container_port},
            "periodSeconds": _seconds(h.interval),
            "timeoutSeconds": _seconds(h.timeout),
            "successThreshold": h.healthy_threshold,
            "failureThreshold": h.unhealthy_threshold,
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, spec.namespace, labels, **annotations),
        "spec": {
            "replicas": spec.replicas,
            "selector": {
                "matchLabels": selector(spec.app, spec.environment, spec.service, spec.color)
            },
            # A color is replaced by the other color, never rolled in place: a new release of
            # the same color (a restart) may replace its pods all at once.
            "strategy": {"type": "Recreate"},
            "progressDeadlineSeconds": _seconds(spec.health.start_timeout, 1),
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "containers": [container],
                    "terminationGracePeriodSeconds": _seconds(spec.stop_timeout, 0),
                },
            },
        },
    }


def color_service(spec: ColorSpec) -> dict[str, Any]:
    """The color's own address in the cluster (`<service>-<color>.<namespace>.svc`)."""
    name = color_name(spec.service, spec.color)
    return _service(
        name,
        spec.namespace,
        color_labels(spec),
        selector(spec.app, spec.environment, spec.service, spec.color),
        spec.container_port,
        spec.container_port,
    )


def secret(spec: ColorSpec, values: Mapping[str, str] | None) -> dict[str, Any]:
    """The color's Secret; without `values` (render), its key names only, never a value."""
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(
            secret_name(spec.service, spec.color),
            spec.namespace,
            color_labels(spec),
            **{SECRET_KEYS: ",".join(sorted(spec.secrets))},
        ),
        "type": "Opaque",
    }
    if values is not None:
        obj["data"] = {
            k: base64.b64encode(values[k].encode()).decode() for k in sorted(spec.secrets)
        }
    return obj


def color_objects(spec: ColorSpec, secret_values: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """What the runtime applies to start a color, in order (the Secret before its readers)."""
    objects = [secret(spec, secret_values)] if spec.secrets else []
    objects.append(deployment(spec))
    if spec.web:
        objects.append(color_service(spec))
    return objects


# --- traffic ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """What the routers need of one web service (Router.options carries it, per service)."""

    app: str
    environment: str
    service: str
    namespace: str
    port: int  # the Service's port (the service's public `port`)
    container_port: int
    preview_port: int | None = None
    gateway: str | None = None  # "name" or "namespace/name"


def _service(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    pods: Mapping[str, str],
    port: int,
    target: int,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(pods),
            "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}],
        },
    }


def service(route: Route, color: str, preview: bool = False) -> dict[str, Any]:
    """The Service named after the service (or its `-preview`), selecting one color."""
    name = preview_name(route.service) if preview else check_name(route.service, "service")
    port = (route.preview_port or route.port) if preview else route.port
    pods = selector(route.app, route.environment, route.service, color)
    labels = owner_labels(route.app, route.environment, route.service)
    return _service(name, route.namespace, labels, pods, port, route.container_port)


def http_route(route: Route, weights: Mapping[str, int]) -> dict[str, Any]:
    """The HTTPRoute `<service>` on the configured Gateway, weighing the color Services."""
    if not route.gateway:
        raise ManifestError(
            'router kind "gateway-api" needs runtime.gateway: the Gateway the HTTPRoute '
            'attaches to ("name" or "namespace/name")'
        )
    gw_namespace, _, gw_name = route.gateway.rpartition("/")
    parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gw_name}
    if gw_namespace:
        parent["namespace"] = gw_namespace
    backends = [
        {
            "group": "",
            "kind": "Service",
            "name": color_name(route.service, color),
            "port": route.container_port,
            "weight": weight,
        }
        for color, weight in sorted(weights.items())
    ]
    return {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": _metadata(
            check_name(route.service, "service"),
            route.namespace,
            owner_labels(route.app, route.environment, route.service),
        ),
        "spec": {
            "parentRefs": [parent],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": backends,
                }
            ],
        },
    }


# --- from the agent's workload ------------------------------------------------------------------


def container_env_of(env: Mapping[str, str], machine: Mapping[str, str]) -> dict[str, str]:
    """The workload's environment without what came from the agent's own machine.

    The engine gives a local process the agent's PATH, HOME, LANG...; a container has its own
    (from its image). A value the configuration sets differently from the machine's is kept.
    """
    return {
        k: v
        for k, v in env.items()
        if k not in _MARKERS
        and k != "PORT"
        and not ((k in PASSTHROUGH or k.startswith("LC_")) and machine.get(k) == v)
    }


def image_for(options: Mapping[str, Any], version: str, service: str) -> str:
    """The image a color runs: `image`, tagged with the version when conveyor builds it."""
    image = options.get("image")
    if not image:
        raise ManifestError(
            f'services.{service}.image is needed with runtime kind "kubernetes" (the image the '
            "cluster pulls)"
        )
    return f"{image}:{label_value(version)}" if options.get("build") else str(image)


def health_of(raw: Mapping[str, Any] | None) -> HealthConfig:
    return HealthConfig.model_validate(raw or {})


# --- from the configuration (conveyor render, and the routers' options) -------------------------


def route_of(env: ResolvedEnvironment, name: str) -> Route:
    svc = env.services[name]
    assert svc.port is not None
    return Route(
        app=env.app,
        environment=env.name,
        service=name,
        namespace=env.runtime.namespace,
        port=svc.port,
        container_port=svc.container_port or DEFAULT_CONTAINER_PORT,
        preview_port=svc.preview_port,
        gateway=env.runtime.gateway,
    )


def spec_of(
    env: ResolvedEnvironment, name: str, version: str, color: str, secrets: Collection[str] = ()
) -> ColorSpec:
    """A color as the configuration describes it, with the variables conveyor adds."""
    svc = env.services[name]
    plain = {
        **svc.env,
        "CONVEYOR_APP": env.app,
        "CONVEYOR_ENV": env.name,
        "CONVEYOR_SERVICE": name,
        "CONVEYOR_VERSION": version,
        "CONVEYOR_COLOR": color,
    }
    return ColorSpec(
        app=env.app,
        environment=env.name,
        service=name,
        color=color,
        version=version,
        namespace=env.runtime.namespace,
        image=image_for(svc.runtime_options(), version, name),
        command=svc.command,
        web=svc.kind == "web",
        container_port=svc.container_port or DEFAULT_CONTAINER_PORT,
        replicas=svc.replicas,
        resources={str(k): v for k, v in svc.resources.items()},
        health=svc.health,
        stop_timeout=svc.stop_timeout,
        env={k: v for k, v in plain.items() if k not in secrets},
        secrets=tuple(sorted(secrets)),
    )


def render(
    env: ResolvedEnvironment,
    version: str,
    color: str,
    router: str,
    secrets: Mapping[str, Collection[str]] | None = None,
) -> list[dict[str, Any]]:
    """Every object conveyor would apply to make `version` live as `color` in `env`.

    `secrets` names each service's secrets: their Secret is rendered with the names only.
    """
    objects: list[dict[str, Any]] = []
    for name, svc in env.services.items():
        spec = spec_of(env, name, version, color, (secrets or {}).get(name, ()))
        objects.extend(color_objects(spec, None))
        if svc.kind != "web":
            continue
        route = route_of(env, name)
        objects.append(service(route, color))
        if svc.preview_port is not None or not env.rollout.auto_promote:
            objects.append(service(route, color, preview=True))
        if router == "gateway-api":
            objects.append(http_route(route, {color: 100}))
    return objects
