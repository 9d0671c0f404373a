"""JSON Schemas of conveyor.toml and of the deployment manifest, generated from their models.

`conveyor schema config` is what editors use (through taplo or tombi) to complete and check
conveyor.toml as it is typed; the loader stays the judge (it also checks what a schema cannot
say, such as ports shared between services). docs/promotion.md says how to wire it up.
"""

from __future__ import annotations

from typing import Any

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_schema() -> dict[str, Any]:
    from conveyor.config.models import Config

    schema = Config.model_json_schema(mode="validation")
    # `source` is where the file was read from, not one of its keys.
    schema["properties"].pop("source", None)
    hooks = schema["$defs"]["HooksConfig"]["properties"]
    for name, prop in hooks.items():
        # `smoke = "python3 smoke.py"` is shorthand for `smoke = { command = "..." }`.
        hooks[name] = {
            "anyOf": [{"type": "string"}, {"$ref": "#/$defs/HookConfig"}],
            "description": prop.get("description", f"The {name} hook: a command or a table."),
        }
    return {"$schema": DIALECT, **schema, "title": "conveyor.toml"}


def manifest_schema() -> dict[str, Any]:
    from conveyor.manifest import DeploymentManifest

    schema = DeploymentManifest.model_json_schema(mode="serialization")
    return {"$schema": DIALECT, **schema, "title": "conveyor deployment manifest"}
