"""The deployment manifest: what runs in an environment, shaped after design doc 003's
`DeploymentManifest` (version, environment, services with url/commit/status, infrastructure).

`conveyor manifest --env E` prints it; `conveyor schema manifest` prints its JSON Schema.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from conveyor import __version__
from conveyor.config import Config
from conveyor.store.db import Store

Status = Literal["healthy", "unhealthy", "stopped", "not deployed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceManifest(_Model):
    kind: Literal["web", "worker"]
    url: str | None = Field(description="Where the service is served (web services).")
    version: str | None = Field(description="The release the active color runs.")
    commit: str | None = Field(description="The git commit of that release, if it had one.")
    digest: str | None = Field(description="The release's content digest (sha256-...).")
    color: str | None = Field(description="The active color: blue or green.")
    status: Status


class Component(_Model):
    kind: str
    version: str


class Infrastructure(_Model):
    runtime: Component
    router: Component
    conveyor_version: str
    config_changed_at: datetime | None = Field(
        description="When conveyor.toml was last modified (its mtime)."
    )
    config_digest: str = Field(
        description="sha256 of the environment's resolved configuration: equal digests, "
        "equal configuration."
    )


class DeploymentManifest(_Model):
    app: str
    environment: str
    version: str | None = Field(description="The version live in every service (None: mixed).")
    deployment: int | None = Field(description="The deployment that made it live.")
    services: dict[str, ServiceManifest]
    infrastructure: Infrastructure
    generated_at: datetime


def build(
    cfg: Config, config_file: Path, store: Store, env_name: str, status: dict[str, Any]
) -> DeploymentManifest:
    """The manifest from the agent's `status` answer and the store's records."""
    env = cfg.environment(env_name)
    services: dict[str, ServiceManifest] = {}
    for entry in status.get("services", []):
        active = entry.get("active")
        release = store.get_release(env.app, active["version"]) if active else None
        if active is None:
            state: Status = "not deployed" if entry.get("standby") is None else "stopped"
        else:
            state = "healthy" if active.get("healthy") else "unhealthy"
        services[entry["name"]] = ServiceManifest(
            kind=entry["kind"],
            url=entry.get("url"),
            version=active["version"] if active else None,
            commit=release.commit if release else None,
            digest=release.digest if release else None,
            color=active["color"] if active else None,
            status=state,
        )
    versions = {s.version for s in services.values()}
    version = versions.pop() if len(versions) == 1 else None
    deployment = None
    if version is not None:
        for dep in store.list_deployments(env.app, env_name, limit=200):
            if dep.version == version and dep.outcome == "succeeded" and dep.kind != "stop":
                deployment = dep.id
                break
    try:
        changed: datetime | None = datetime.fromtimestamp(config_file.stat().st_mtime, UTC)
    except OSError:
        changed = None
    resolved = env.model_dump_json().encode()
    return DeploymentManifest(
        app=env.app,
        environment=env_name,
        version=version,
        deployment=deployment,
        services=services,
        infrastructure=Infrastructure(
            # Both are conveyor's own today: the local runtime and the built-in proxy.
            runtime=Component(kind="local", version=__version__),
            router=Component(kind=cfg.router.kind, version=__version__),
            conveyor_version=__version__,
            config_changed_at=changed,
            config_digest="sha256-" + hashlib.sha256(resolved).hexdigest(),
        ),
        generated_at=datetime.now(UTC),
    )
