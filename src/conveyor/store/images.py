"""The images of releases in the state store: per release and service, the reference and the id.

Written once by `conveyor release create` (conveyor.images), read by `conveyor releases` and by
the fleet when it starts a color, so the container runs the very image recorded with the
release, whatever its tag points at since.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select

from conveyor.store.db import Store
from conveyor.store.models import ReleaseImageRow


@dataclass(frozen=True)
class ReleaseImage:
    service: str
    image: str  # "<image>:<version>" when conveyor built it, else the configured reference
    image_id: str  # the engine's id of it: sha256:...
    built: bool


def record(store: Store, app: str, version: str, images: Iterable[ReleaseImage]) -> None:
    with store.writing() as session:
        for img in images:
            session.add(
                ReleaseImageRow(
                    app=app,
                    version=version,
                    service=img.service,
                    image=img.image,
                    image_id=img.image_id,
                    built=img.built,
                )
            )


def of_app(store: Store, app: str) -> dict[str, list[ReleaseImage]]:
    """Every release's images, by version (services in name order)."""
    found: dict[str, list[ReleaseImage]] = {}
    with store.reading() as session:
        rows = session.scalars(
            select(ReleaseImageRow)
            .where(ReleaseImageRow.app == app)
            .order_by(ReleaseImageRow.version, ReleaseImageRow.service)
        )
        for row in rows:
            found.setdefault(row.version, []).append(
                ReleaseImage(row.service, row.image, row.image_id, row.built)
            )
    return found


def workload_options(store: Store, app: str, version: str, service: str) -> dict[str, str]:
    """What a container runtime needs of the release's image: {"image_id": ...}, or {}."""
    with store.reading() as session:
        row = session.get(ReleaseImageRow, (app, version, service))
        return {"image_id": row.image_id} if row is not None else {}
