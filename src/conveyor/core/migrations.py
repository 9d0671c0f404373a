"""Which migrations are pending, which of them wait, and what a down step undoes (pure).

A migration is *expand* (the old release keeps working on the new schema: a nullable column, a
new table, an index built concurrently) or *contract* (only safe once no old release runs: drop
a column, set NOT NULL, drop the old name after a rename). Expand migrations run before traffic
switches; contract migrations are held until the old color is gone (the end of the standby
window, or `conveyor migrate contract`), so that a switch back within the standby window never
lands the old release on a schema it cannot use.

Everything here takes plain values (versions, `now`): the files are read by
conveyor.migrations.goose and the database by conveyor.migrations.runner.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

EXPAND = "expand"
CONTRACT = "contract"


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int  # where the statement starts in its file (1-based)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: str  # for messages: as the user knows the file (relative to the project when possible)
    up: tuple[Statement, ...]
    down: tuple[Statement, ...] | None  # None: the file has no Down section
    transaction: bool = True  # False: -- +goose NO TRANSACTION
    contract: bool = False
    # The whole file, for the linter and for messages that quote a line.
    text: str = field(default="", repr=False, compare=False)

    @property
    def kind(self) -> str:
        return CONTRACT if self.contract else EXPAND

    @property
    def label(self) -> str:
        return f"{self.version} {self.name}"


class PlanError(ValueError):
    """What was asked cannot be done (a missing Down section, an unknown version)."""


@dataclass(frozen=True)
class Plan:
    """The pending migrations, split by when they may run, in the order they run."""

    expand: tuple[Migration, ...] = ()
    contract: tuple[Migration, ...] = ()
    # Versions recorded as applied whose file is gone (a deleted or renamed file): shown, never
    # touched.
    missing: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.expand and not self.contract

    def all(self) -> tuple[Migration, ...]:
        return tuple(sorted(self.expand + self.contract, key=lambda m: m.version))


def check_versions(migrations: Iterable[Migration]) -> list[str]:
    """Problems that make a set of files unusable: one version in two files."""
    seen: dict[int, Migration] = {}
    problems: list[str] = []
    for m in migrations:
        if m.version in seen:
            problems.append(f"{m.path}: version {m.version} is also {seen[m.version].path}")
        else:
            seen[m.version] = m
    return problems


def plan(migrations: Iterable[Migration], applied: Iterable[int], to: int | None = None) -> Plan:
    """What `up` would run, in version order; `to`: nothing above that version.

    A pending version below the newest applied one (a branch merged late) still runs, in
    version order, as goose does with `-allow-missing`: refusing it would leave the schema
    short of what the release needs.
    """
    done = set(applied)
    ordered = sorted(migrations, key=lambda m: m.version)
    known = {m.version for m in ordered}
    pending = [m for m in ordered if m.version not in done and (to is None or m.version <= to)]
    return Plan(
        expand=tuple(m for m in pending if not m.contract),
        contract=tuple(m for m in pending if m.contract),
        missing=tuple(sorted(done - known)),
    )


def down_plan(
    migrations: Iterable[Migration], applied: Iterable[int], to: int | None = None
) -> list[Migration]:
    """What `down` would undo, newest first: the newest applied migration, or with `to`, every
    applied migration above version `to` (`to = 0`: all of them).

    Raises PlanError naming the first one without a Down section (nothing is undone then) or an
    applied version whose file is gone.
    """
    by_version = {m.version: m for m in migrations}
    done = sorted(set(applied), reverse=True)
    if to is None:
        targets = done[:1]
    else:
        if to < 0:
            raise PlanError(f"--to must be a version or 0 (got {to})")
        targets = [v for v in done if v > to]
    chosen: list[Migration] = []
    for version in targets:
        m = by_version.get(version)
        if m is None:
            raise PlanError(
                f"version {version} is applied but its file is gone: nothing to run its Down "
                "section from (restore the file, or stop at --to "
                f"{version})"
            )
        if m.down is None or not m.down:
            raise PlanError(
                f"{m.path} has no Down section: it cannot be undone (write one, or restore "
                "the backup taken before it: conveyor db backups)"
            )
        chosen.append(m)
    return chosen


def select(migrations: Sequence[Migration], versions: Iterable[int]) -> list[Migration]:
    """The migrations of `versions`, newest first (a deployment's own, to undo them)."""
    wanted = set(versions)
    return sorted((m for m in migrations if m.version in wanted), key=lambda m: -m.version)


@dataclass(frozen=True)
class ContractDecision:
    run: bool
    reason: str
    # When it becomes due, if known and not yet: the end of the standby window.
    at: datetime | None = None


def contract_due(
    now: datetime, standby_until: datetime | None, old_running: bool
) -> ContractDecision:
    """Whether held contract migrations may run now.

    They may once no old release can take traffic again: its color was stopped, or the standby
    window ended (the engine stops it then). While the window is open a switch back would put
    the old release on the contracted schema, so they wait.
    """
    if not old_running:
        return ContractDecision(True, "no old color is running")
    if standby_until is None:
        # An old color running with no window: kept on purpose (a canary's stable, or a
        # standby kept indefinitely): only the operator can say it is safe.
        return ContractDecision(
            False, "the old color is kept running: run `conveyor migrate contract` once it is gone"
        )
    if now >= standby_until:
        return ContractDecision(True, "the standby window ended")
    return ContractDecision(
        False, f"held until the standby window ends at {standby_until:%H:%M:%S} UTC", standby_until
    )


def position_line(statement: Statement, position: int | None) -> int:
    """The file line of a 1-based character `position` inside `statement` (PostgreSQL's error
    position), or the statement's first line without one."""
    if not position or position < 1:
        return statement.line
    return statement.line + statement.sql.count("\n", 0, position - 1)


# Statements that throw data away. A keyword check, not a parser: it decides only whether a
# Down section needs --force, so a false alarm costs a flag and a miss is what the linter
# (conveyor migrations lint) is for.
_DESTRUCTIVE = (
    (re.compile(r"^\s*DROP\s+(TABLE|SCHEMA|DATABASE|MATERIALIZED\s+VIEW)\b", re.I), "drops {0}"),
    (re.compile(r"\bDROP\s+COLUMN\b", re.I), "drops a column"),
    (re.compile(r"^\s*TRUNCATE\b", re.I), "truncates a table"),
    (re.compile(r"^\s*DELETE\s+FROM\b", re.I), "deletes rows"),
)


def destructive(statements: Iterable[Statement]) -> list[tuple[Statement, str]]:
    """The statements that destroy data, each with what it does ("drops a column")."""
    found: list[tuple[Statement, str]] = []
    for statement in statements:
        for pattern, what in _DESTRUCTIVE:
            match = pattern.search(statement.sql)
            if match:
                kind = match.group(1).lower() if match.groups() else ""
                found.append((statement, what.format(f"a {' '.join(kind.split())}")))
                break
    return found


def restore_refusal(backup_live: str | None, live_now: str | None) -> str | None:
    """Why a backup should not be restored now, or None.

    A backup fits the release that was live when it was taken (it was taken before the next
    deploy migrated). Restoring it under another live release would put that release on a
    schema older than it expects; with nothing live there is nothing to break.
    """
    if live_now is None or live_now == backup_live:
        return None
    then = f"{backup_live} was live" if backup_live else "nothing was live"
    return (
        f"{live_now} is live, but {then} when the backup was taken: its schema may be older "
        f"than {live_now} needs"
    )
