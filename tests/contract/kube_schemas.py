"""Offline validation of rendered Kubernetes objects against the official schemas.

Built-in kinds: the OpenAPI schemas of Kubernetes 1.30 that `kubernetes-validate` bundles, in
strict mode (an unknown field is an error). HTTPRoute is a CRD the package does not know: the
Gateway API v1.2.1 CRD's openAPIV3Schema, vendored in tests/contract/, through jsonschema.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

KUBERNETES_VERSION = "1.30.0"
HTTPROUTE_SCHEMA = Path(__file__).parent / "httproute_v1_schema.json"


@cache
def _httproute_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(HTTPROUTE_SCHEMA.read_text())
    schema.pop("$comment", None)
    return jsonschema.Draft7Validator(schema)


def validate(obj: dict[str, Any]) -> None:
    """Raise if `obj` is not a valid object of its kind."""
    if obj["kind"] == "HTTPRoute":
        assert obj["apiVersion"] == "gateway.networking.k8s.io/v1"
        _httproute_validator().validate(obj)
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
