"""Which deployment changed an environment's app database schema: one row per migration applied
(up) or undone (down), in the state database beside the deployments, so the history can say
"deployment 12 applied 004_add_email (0.03s)". The versions applied are in the app database
itself (goose_db_version); these rows are who did it, when and how long it took.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import select

from conveyor.store.db import Store
from conveyor.store.models import SchemaChangeRow


@dataclass(frozen=True)
class SchemaChange:
    app: str
    environment: str
    deployment_id: int | None  # None: by hand (`conveyor migrate`)
    version: int
    name: str
    kind: str  # expand | contract
    direction: str  # up | down
    seconds: float
    actor: str
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment_id": self.deployment_id,
            "version": self.version,
            "name": self.name,
            "kind": self.kind,
            "direction": self.direction,
            "seconds": round(self.seconds, 3),
            "actor": self.actor,
            "at": self.at.isoformat(),
        }


def record(store: Store, change: SchemaChange) -> None:
    with store.writing() as session:
        session.add(SchemaChangeRow(**asdict(change)))


def changes(
    store: Store, app: str, environment: str, deployment_id: int | None = None
) -> list[SchemaChange]:
    """Oldest first; only one deployment's with `deployment_id`."""
    query = select(SchemaChangeRow).where(
        SchemaChangeRow.app == app, SchemaChangeRow.environment == environment
    )
    if deployment_id is not None:
        query = query.where(SchemaChangeRow.deployment_id == deployment_id)
    names = [f.name for f in fields(SchemaChange)]
    with store.reading() as session:
        return [
            SchemaChange(**{name: getattr(row, name) for name in names})
            for row in session.scalars(query.order_by(SchemaChangeRow.id))
        ]


def applied_by(history: list[SchemaChange]) -> dict[int, SchemaChange]:
    """Each version still applied -> the change that applied it (the last `up` not undone)."""
    last: dict[int, SchemaChange] = {}
    for change in history:
        if change.direction == "up":
            last[change.version] = change
        else:
            last.pop(change.version, None)
    return last
