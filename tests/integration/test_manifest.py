"""`conveyor manifest` against a real deployment, validated against `conveyor schema manifest`."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conftest import Project


def test_the_manifest_validates_against_its_own_schema(project: Project) -> None:
    project.configure(worker=True)
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    code, data = project.json("manifest", "--env", "dev")
    assert code == 0, data
    schema = json.loads(project.cli("schema", "manifest").stdout)
    jsonschema.validate(data, schema)

    [(dep_id, digest)] = project.db(
        "SELECT d.id, r.digest FROM deployments d JOIN releases r ON r.version = d.version"
    )
    assert (data["app"], data["environment"], data["version"]) == ("shop", "dev", "v1")
    assert data["deployment"] == dep_id
    web, jobs = data["services"]["web"], data["services"]["jobs"]
    assert web["url"] == f"http://127.0.0.1:{project.port}"
    assert (web["status"], web["version"], web["digest"]) == ("healthy", "v1", digest)
    assert web["color"] in ("blue", "green") and web["commit"] is None  # not a git project
    assert (jobs["kind"], jobs["url"], jobs["version"]) == ("worker", None, "v1")
    infra = data["infrastructure"]
    assert (infra["runtime"]["kind"], infra["router"]["kind"]) == ("local", "builtin")
    assert infra["config_changed_at"] and infra["config_digest"].startswith("sha256-")

    # The schema is not a formality: what the manifest may not say, it refuses.
    web["status"] = "sleepy"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)

    plain = project.cli("manifest", "--env", "dev")
    assert plain.returncode == 0 and "shop / dev: v1" in plain.stdout


def test_schema_of_something_unknown(project: Project) -> None:
    project.configure()
    proc = project.cli("schema", "nothing")
    assert proc.returncode == 2 and "use config or manifest" in proc.stderr
