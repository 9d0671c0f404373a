"""Conveyor's state store (see `conveyor.store.db`)."""

from conveyor.store.db import (
    DeploymentRecord,
    DuplicateRelease,
    EventRecord,
    InstanceRecord,
    ReleaseRecord,
    Store,
    StoreError,
    StoreLost,
    UnknownDeployment,
    database_url,
    redacted_url,
)

__all__ = [
    "DeploymentRecord",
    "DuplicateRelease",
    "EventRecord",
    "InstanceRecord",
    "ReleaseRecord",
    "Store",
    "StoreError",
    "StoreLost",
    "UnknownDeployment",
    "database_url",
    "redacted_url",
]
