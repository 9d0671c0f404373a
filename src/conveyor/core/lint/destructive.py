"""Statements that throw data away: what makes a Down section destructive.

`conveyor rollback --migrations down` refuses to run such a Down without --force.
"""

from __future__ import annotations

from typing import Any

from pglast.enums import AlterTableType as At
from pglast.enums import ObjectType

from conveyor.core.lint.nodes import dropped_name, kind_is, table_name


def destroys(stmt: Any) -> str | None:
    """What data `stmt` throws away, in words, or None."""
    if kind_is(stmt, "DropStmt"):
        kinds = {
            ObjectType.OBJECT_TABLE: "table",
            ObjectType.OBJECT_SCHEMA: "schema",
            ObjectType.OBJECT_MATVIEW: "materialized view",
            ObjectType.OBJECT_SEQUENCE: "sequence",
        }
        kind = kinds.get(stmt.removeType)
        if kind is None:
            return None
        names = ", ".join(dropped_name(o) for o in stmt.objects)
        return f"drops {kind} {names}"
    if kind_is(stmt, "AlterTableStmt"):
        dropped = [c.name for c in stmt.cmds if c.subtype == At.AT_DropColumn]
        if dropped:
            return f"drops column {', '.join(dropped)} of {table_name(stmt.relation)}"
        return None
    if kind_is(stmt, "TruncateStmt"):
        return f"truncates {', '.join(table_name(r) for r in stmt.relations)}"
    if kind_is(stmt, "DropdbStmt"):
        return f"drops database {stmt.dbname}"
    if kind_is(stmt, "DeleteStmt") and stmt.whereClause is None:
        return f"deletes every row of {table_name(stmt.relation)}"
    return None
