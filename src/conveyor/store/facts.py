"""Promotion facts in the state store: check results, approvals and rejections, release tags.

What the gates (conveyor.core.gates) are decided from, besides the deployments themselves. Each
method is one short transaction on the Store's engine and returns frozen records. Nothing here is
ever rewritten but a withdrawal, which is stamped on the approval or rejection it ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from conveyor.store.db import Store
from conveyor.store.models import (
    ApprovalRow,
    ApprovalWithdrawalRow,
    CheckResultRow,
    ReleaseTagRow,
)

DECISIONS = frozenset({"approve", "reject"})


@dataclass(frozen=True)
class CheckRecord:
    id: int
    app: str
    version: str
    name: str
    passed: bool
    url: str | None
    actor: str
    at: datetime


@dataclass(frozen=True)
class ApprovalRecord:
    id: int
    app: str
    version: str
    environment: str
    actor: str
    decision: str  # approve | reject
    comment: str
    at: datetime
    withdrawn_at: datetime | None
    withdrawn_by: str | None

    @property
    def withdrawn(self) -> bool:
        return self.withdrawn_at is not None


def _check(row: CheckResultRow) -> CheckRecord:
    return CheckRecord(
        id=row.id,
        app=row.app,
        version=row.version,
        name=row.name,
        passed=row.passed,
        url=row.url,
        actor=row.actor,
        at=row.at,
    )


def _approval(row: ApprovalRow) -> ApprovalRecord:
    return ApprovalRecord(
        id=row.id,
        app=row.app,
        version=row.version,
        environment=row.environment,
        actor=row.actor,
        decision=row.decision,
        comment=row.comment,
        at=row.at,
        withdrawn_at=row.withdrawn_at,
        withdrawn_by=row.withdrawn_by,
    )


class FactStore:
    """The promotion facts of one state store (same database, same transactions rules)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # checks

    def record_check(
        self,
        app: str,
        version: str,
        name: str,
        passed: bool,
        actor: str,
        at: datetime,
        url: str | None = None,
    ) -> CheckRecord:
        row = CheckResultRow(
            app=app, version=version, name=name, passed=passed, url=url, actor=actor, at=at
        )
        with self._store._write() as session:
            session.add(row)
            session.flush()
            return _check(row)

    def checks(self, app: str, version: str) -> list[CheckRecord]:
        """Oldest first."""
        with self._store._read() as session:
            rows = session.scalars(
                select(CheckResultRow)
                .where(CheckResultRow.app == app, CheckResultRow.version == version)
                .order_by(CheckResultRow.id)
            )
            return [_check(row) for row in rows]

    # approvals and rejections

    def decide(
        self,
        app: str,
        version: str,
        environment: str,
        actor: str,
        decision: str,
        at: datetime,
        comment: str = "",
    ) -> ApprovalRecord:
        if decision not in DECISIONS:
            raise ValueError(f"invalid decision {decision!r} (approve or reject)")
        row = ApprovalRow(
            app=app,
            version=version,
            environment=environment,
            actor=actor,
            decision=decision,
            comment=comment,
            at=at,
            withdrawn_at=None,
            withdrawn_by=None,
        )
        with self._store._write() as session:
            session.add(row)
            session.flush()
            return _approval(row)

    def withdraw(
        self,
        app: str,
        version: str,
        environment: str,
        decision: str,
        by: str,
        at: datetime,
        of: Iterable[str] | None = None,
    ) -> list[ApprovalRecord]:
        """End the standing `decision`s of `version` for `environment` given by the people in
        `of` (everyone's when None); the ones withdrawn, stamped with `by` and `at`."""
        who = None if of is None else set(of)
        with self._store._write() as session:
            rows = session.scalars(
                select(ApprovalRow)
                .where(
                    ApprovalRow.app == app,
                    ApprovalRow.version == version,
                    ApprovalRow.environment == environment,
                    ApprovalRow.decision == decision,
                    ApprovalRow.withdrawn_at.is_(None),
                )
                .order_by(ApprovalRow.id)
            )
            ended = []
            for row in rows:
                if who is not None and row.actor not in who:
                    continue
                row.withdrawn_at = at
                row.withdrawn_by = by
                ended.append(row)
                # The event stream reads withdrawals by this row's id (api/events.py).
                session.add(
                    ApprovalWithdrawalRow(
                        approval_id=row.id, app=row.app, withdrawn_by=by, withdrawn_at=at
                    )
                )
            session.flush()
            return [_approval(row) for row in ended]

    def approvals(self, app: str, environment: str) -> list[ApprovalRecord]:
        """Every approval and rejection for `environment`, of any release, oldest first."""
        with self._store._read() as session:
            rows = session.scalars(
                select(ApprovalRow)
                .where(ApprovalRow.app == app, ApprovalRow.environment == environment)
                .order_by(ApprovalRow.id)
            )
            return [_approval(row) for row in rows]

    # release tags

    def add_tags(self, app: str, version: str, tags: Iterable[str]) -> None:
        with self._store._write() as session:
            for tag in sorted(set(tags)):
                session.merge(ReleaseTagRow(app=app, version=version, tag=tag))

    def tags(self, app: str, version: str) -> tuple[str, ...]:
        with self._store._read() as session:
            rows = session.scalars(
                select(ReleaseTagRow.tag)
                .where(ReleaseTagRow.app == app, ReleaseTagRow.version == version)
                .order_by(ReleaseTagRow.tag)
            )
            return tuple(rows)
