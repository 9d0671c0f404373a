"""Which statements take an ACCESS EXCLUSIVE lock, and whether the file bounds the wait for it.

Lock levels are PostgreSQL's (the ALTER TABLE page of its manual). A statement waiting for a lock
blocks every query queued behind it, reads included when it waits for ACCESS EXCLUSIVE: a change
that takes a millisecond can stall the app for as long as the oldest running query takes.
"""

from __future__ import annotations

from typing import Any

from pglast.enums import AlterTableType as At
from pglast.enums import ConstrType, ObjectType

from conveyor.core.lint.catalogue import Hit
from conveyor.core.lint.nodes import dropped_name, kind_is, table_name
from conveyor.core.lint.state import FileState

# ALTER TABLE forms that take less than ACCESS EXCLUSIVE (everything else takes it).
_WEAKER_ALTERS = frozenset(
    {
        At.AT_ValidateConstraint,
        At.AT_SetStatistics,
        At.AT_ClusterOn,
        At.AT_DropCluster,
        At.AT_SetOptions,
        At.AT_ResetOptions,
        At.AT_SetRelOptions,
        At.AT_ResetRelOptions,
        At.AT_AttachPartition,
        At.AT_EnableTrig,
        At.AT_EnableAlwaysTrig,
        At.AT_EnableReplicaTrig,
        At.AT_DisableTrig,
        At.AT_EnableTrigAll,
        At.AT_DisableTrigAll,
        At.AT_EnableTrigUser,
        At.AT_DisableTrigUser,
    }
)
_ACCESS_EXCLUSIVE_LOCK = 8  # LockStmt.mode


def exclusive_lock(stmt: Any, state: FileState) -> str | None:
    """The existing table `stmt` takes an ACCESS EXCLUSIVE lock on, if it does."""
    if kind_is(stmt, "AlterTableStmt"):
        relation = stmt.relation
        if stmt.objtype != ObjectType.OBJECT_TABLE or state.is_new(relation.relname):
            return None
        for cmd in stmt.cmds:
            if cmd.subtype in _WEAKER_ALTERS:
                continue
            con = cmd.def_
            foreign = kind_is(con, "Constraint") and con.contype == ConstrType.CONSTR_FOREIGN
            if cmd.subtype == At.AT_AddConstraint and foreign:
                continue  # SHARE ROW EXCLUSIVE
            if cmd.subtype == At.AT_DetachPartition and getattr(con, "concurrent", False):
                continue
            return table_name(relation)
        return None
    if kind_is(stmt, "RenameStmt") and stmt.relation is not None:
        if stmt.renameType in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_COLUMN):
            return None if state.is_new(stmt.relation.relname) else table_name(stmt.relation)
        return None
    if kind_is(stmt, "DropStmt") and not stmt.concurrent:
        if stmt.removeType in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_INDEX):
            names = [dropped_name(o) for o in stmt.objects]
            known = state.created_tables | state.created_indexes
            old = [n for n in names if n.rsplit(".", 1)[-1] not in known]
            return old[0] if old else None
        return None
    if kind_is(stmt, "TruncateStmt"):
        old = [table_name(r) for r in stmt.relations if not state.is_new(r.relname)]
        return old[0] if old else None
    if kind_is(stmt, "LockStmt") and stmt.mode == _ACCESS_EXCLUSIVE_LOCK:
        return table_name(stmt.relations[0])
    if kind_is(stmt, "RefreshMatViewStmt") and not stmt.concurrent:
        return table_name(stmt.relation)
    if kind_is(stmt, "VacuumStmt") and any(o.defname == "full" for o in stmt.options or ()):
        return table_name(stmt.rels[0].relation) if stmt.rels else "every table"
    if kind_is(stmt, "ClusterStmt"):
        return table_name(stmt.relation) if stmt.relation is not None else "every clustered table"
    return None


def missing_timeout(stmt: Any, state: FileState) -> list[Hit]:
    if state.lock_timeout or (state.local_lock_timeout and state.in_transaction):
        return []
    table = exclusive_lock(stmt, state)
    if table is None:
        return []
    return [
        Hit(
            "missing-lock-timeout",
            f"this statement takes an ACCESS EXCLUSIVE lock on {table} with no lock_timeout "
            "set: while it waits for a long query or transaction to finish, every read and "
            f"write on {table} queues behind it, so a moment's change can stall the app for "
            "as long as that query runs",
            "`SET lock_timeout = '5s';` at the top of the migration (SET LOCAL in a "
            "transactional one), and retry the deploy if it times out",
        )
    ]
