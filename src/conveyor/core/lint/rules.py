"""The checks, one parsed statement at a time (pglast nodes in, Hits out).

Each statement is judged with what came before it (state.FileState): `check` reads that state,
and the caller records the statement into it afterwards.

Lock levels are PostgreSQL's (the ALTER TABLE page of its manual): ACCESS EXCLUSIVE blocks reads
and writes, SHARE (CREATE INDEX) and SHARE ROW EXCLUSIVE (ADD FOREIGN KEY) block writes, SHARE
UPDATE EXCLUSIVE (VALIDATE CONSTRAINT, CREATE INDEX CONCURRENTLY) blocks neither. A statement
waiting for a lock also blocks every query queued behind it, which is why the wait needs a
lock_timeout.
"""

from __future__ import annotations

from typing import Any

from pglast.enums import AlterTableType as At
from pglast.enums import ConstrType, ObjectType

from conveyor.core.lint.catalogue import WARNING, Hit
from conveyor.core.lint.locks import missing_timeout
from conveyor.core.lint.nodes import dropped_name, kind_is, table_name
from conveyor.core.lint.state import FileState
from conveyor.core.lint.volatility import classify

_SERIAL = frozenset({"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"})
_NO_TRANSACTION = "mark the file `-- +goose NO TRANSACTION`"


def check(stmt: Any, state: FileState) -> list[Hit]:
    """The findings of one statement of an Up section."""
    hits = _check(stmt, state)
    hits.extend(missing_timeout(stmt, state))
    return hits


def _check(stmt: Any, state: FileState) -> list[Hit]:
    if kind_is(stmt, "AlterTableStmt"):
        if stmt.objtype != ObjectType.OBJECT_TABLE or state.is_new(stmt.relation.relname):
            return []
        return [hit for cmd in stmt.cmds for hit in _alter(stmt, cmd, state)]
    if kind_is(stmt, "RenameStmt"):
        return _rename(stmt, state)
    if kind_is(stmt, "DropStmt"):
        return _drop(stmt, state)
    if kind_is(stmt, "IndexStmt"):
        return _index(stmt, state)
    if kind_is(stmt, "ReindexStmt"):
        concurrent = any(p.defname == "concurrently" for p in stmt.params or ())
        return _concurrently(state, "REINDEX CONCURRENTLY") if concurrent else []
    if kind_is(stmt, "TruncateStmt"):
        tables = [table_name(r) for r in stmt.relations if not state.is_new(r.relname)]
        if not tables:
            return []
        return [
            Hit(
                "truncate",
                f"TRUNCATE {', '.join(tables)} deletes every row at once under an ACCESS "
                "EXCLUSIVE lock: the running release loses its data mid-request, and the rows "
                "cannot come back without a restore",
                "delete in batches with a WHERE clause, or drop the table in a contract "
                "migration once nothing uses it",
            )
        ]
    if kind_is(stmt, "DropdbStmt"):
        return [
            Hit(
                "drop-database",
                f"DROP DATABASE {stmt.dbname} removes the whole database: every release using "
                "it fails, and only a backup brings it back",
                "drop databases by hand, never from a migration",
            )
        ]
    return []


def _alter(stmt: Any, cmd: Any, state: FileState) -> list[Hit]:
    table = table_name(stmt.relation)
    kind = cmd.subtype
    if kind == At.AT_DropColumn and not state.contract:
        return [
            Hit(
                "drop-column-in-expand",
                f"dropping {table}.{cmd.name} in an expand migration: the old release still "
                "runs during the switch and through the standby window, and its queries naming "
                "the column fail",
                "stop using the column in a release first, then drop it in a contract migration "
                "(`-- conveyor:contract` or the contract/ directory): it runs once the old "
                "color is gone",
            )
        ]
    if kind == At.AT_AddColumn:
        return _add_column(table, cmd.def_, state)
    if kind == At.AT_AlterColumnType:
        return [
            Hit(
                "change-column-type",
                f"changing the type of {table}.{cmd.name} takes an ACCESS EXCLUSIVE lock on "
                f"{table} and, unless the old type converts without a change of bytes (varchar(n) "
                "to a longer varchar or to text), rewrites the table and rebuilds its indexes: "
                "reads and writes block for the whole rewrite, and the old release may not "
                "read or write the new type",
                "add a column of the new type, write both from the release, backfill in "
                "batches, read the new one, and drop the old column in a contract migration "
                "(allow this finding with a reason when the change keeps the bytes)",
            )
        ]
    if kind == At.AT_SetNotNull:
        column = cmd.name
        if (stmt.relation.relname, column) in state.run.validated:
            return []
        return [
            Hit(
                "set-not-null-without-check",
                f"SET NOT NULL on {table}.{column} takes an ACCESS EXCLUSIVE lock on {table} and "
                "scans every row to prove no NULL is left: reads and writes block for the scan",
                f"first `ALTER TABLE {table} ADD CONSTRAINT {column}_not_null CHECK ({column} IS "
                "NOT NULL) NOT VALID`, then in another transaction `VALIDATE CONSTRAINT` (it "
                "scans without blocking writes); SET NOT NULL then skips the scan (PostgreSQL "
                "12+) and the CHECK can be dropped",
            )
        ]
    if kind == At.AT_AddConstraint and kind_is(cmd.def_, "Constraint"):
        return _add_constraint(table, cmd.def_)
    if kind == At.AT_ValidateConstraint:
        if (stmt.relation.relname, cmd.name) not in state.added_not_valid:
            return []
        return [
            Hit(
                "validate-in-same-transaction",
                f"VALIDATE CONSTRAINT {cmd.name} runs in the transaction that added it NOT "
                f"VALID: the lock the ADD took on {table} is held until commit, so the "
                "validation scan runs under it and writes block for the whole scan, as if NOT "
                "VALID had not been written",
                f"validate in a later migration, or {_NO_TRANSACTION} so that each statement "
                "commits on its own",
            )
        ]
    return []


def _add_column(table: str, column: Any, state: FileState) -> list[Hit]:
    hits: list[Hit] = []
    name = column.colname
    constraints = list(column.constraints or ())
    types = {c.contype for c in constraints}
    type_name = str(column.typeName.names[-1].sval).lower()
    default = next(
        (c.raw_expr for c in constraints if c.contype == ConstrType.CONSTR_DEFAULT), None
    )
    rewrite = ""
    if type_name in _SERIAL:
        rewrite = f"a {type_name} column takes nextval() of a new sequence as its default"
    elif ConstrType.CONSTR_IDENTITY in types:
        rewrite = "an identity column gives every existing row its own number"
    elif ConstrType.CONSTR_GENERATED in types and any(
        c.generated_kind != "v" for c in constraints if c.contype == ConstrType.CONSTR_GENERATED
    ):
        rewrite = "a stored generated column is computed and written for every existing row"
    elif default is not None:
        volatile, unknown = classify(default)
        if volatile:
            rewrite = f"the default calls {volatile[0]}(), which is volatile"
        elif unknown:
            hits.append(
                Hit(
                    "add-column-volatile-default",
                    f"the default of {table}.{name} calls {unknown[0]}(), whose volatility is "
                    "not known here: if it is volatile, PostgreSQL rewrites the whole table "
                    f"under an ACCESS EXCLUSIVE lock (reads and writes on {table} block); if it "
                    "is immutable or stable, adding the column touches only the catalog",
                    "check pg_proc.provolatile for the function; when it is volatile, add the "
                    "column without the default, set the default, then backfill in batches",
                    severity=WARNING,
                )
            )
    if rewrite:
        hits.append(
            Hit(
                "add-column-volatile-default",
                f"adding {table}.{name}: {rewrite}, so PostgreSQL rewrites the whole table "
                f"under an ACCESS EXCLUSIVE lock: reads and writes on {table} block for the "
                "whole rewrite (a non-volatile default such as a constant or now() is "
                "metadata-only since PostgreSQL 11)",
                f"add {name} nullable without the default, `ALTER COLUMN {name} SET DEFAULT "
                "...` (new rows only), then backfill existing rows in batches of a few thousand",
            )
        )
    not_null = column.is_not_null or types & {ConstrType.CONSTR_NOTNULL, ConstrType.CONSTR_PRIMARY}
    if not_null and default is None and not rewrite:
        hits.append(
            Hit(
                "add-column-not-null-no-default",
                f"adding {table}.{name} NOT NULL without a default fails as soon as {table} "
                "has a row, and the old release's INSERTs, which do not name the column, "
                "would fail too",
                f"add {name} with a non-volatile DEFAULT (metadata-only since PostgreSQL 11), "
                "or nullable, backfill in batches, and set NOT NULL in a contract migration "
                "after a validated CHECK",
            )
        )
    for con in constraints:
        if con.contype == ConstrType.CONSTR_FOREIGN:
            hits.append(_foreign_key(table, con))
        elif con.contype in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY):
            hits.append(_unique(table, con))
    return hits


def _add_constraint(table: str, con: Any) -> list[Hit]:
    if con.contype == ConstrType.CONSTR_FOREIGN and not con.skip_validation:
        return [_foreign_key(table, con)]
    if con.contype == ConstrType.CONSTR_CHECK and not con.skip_validation:
        name = con.conname or "the constraint"
        return [
            Hit(
                "check-without-not-valid",
                f"adding CHECK {name} validates every row of {table} under an ACCESS EXCLUSIVE "
                "lock: reads and writes block for the whole scan",
                f"add it with NOT VALID (new rows are checked at once), then `ALTER TABLE "
                f"{table} VALIDATE CONSTRAINT {name}` in another transaction: the scan then "
                "blocks neither reads nor writes",
            )
        ]
    if con.contype in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY) and not con.indexname:
        return [_unique(table, con)]
    return []


def _foreign_key(table: str, con: Any) -> Hit:
    target = table_name(con.pktable) if con.pktable is not None else "the referenced table"
    name = con.conname or "the foreign key"
    return Hit(
        "foreign-key-without-not-valid",
        f"adding a foreign key checks every row of {table} against {target} under SHARE ROW "
        f"EXCLUSIVE locks on both: inserts, updates and deletes on {table} and {target} block "
        "for the whole check",
        f"add the column first (if new), then `ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID` "
        f"(only new rows are checked), then `VALIDATE CONSTRAINT {name}` in another transaction",
    )


def _unique(table: str, con: Any) -> Hit:
    what = "PRIMARY KEY" if con.contype == ConstrType.CONSTR_PRIMARY else "UNIQUE"
    return Hit(
        "unique-constraint-without-index",
        f"adding a {what} constraint builds its index under an ACCESS EXCLUSIVE lock on "
        f"{table}: reads and writes block for the whole index build",
        f"`CREATE UNIQUE INDEX CONCURRENTLY` (in a NO TRANSACTION migration), then `ALTER "
        f"TABLE {table} ADD CONSTRAINT ... {what} USING INDEX ...` (a moment's lock)",
    )


def _rename(stmt: Any, state: FileState) -> list[Hit]:
    if stmt.relation is None or state.is_new(stmt.relation.relname):
        return []
    table = table_name(stmt.relation)
    if stmt.renameType == ObjectType.OBJECT_COLUMN and stmt.relationType == ObjectType.OBJECT_TABLE:
        return [
            Hit(
                "rename-column",
                f"renaming {table}.{stmt.subname} to {stmt.newname}: the old release keeps "
                "running during the switch and the standby window, and every query naming "
                f"{stmt.subname} fails (a rollback lands on the new name too)",
                f"add {stmt.newname}, write both columns from the release (or a trigger), "
                f"backfill, read {stmt.newname}, and drop {stmt.subname} in a contract migration",
            )
        ]
    if stmt.renameType == ObjectType.OBJECT_TABLE:
        if state.in_transaction and stmt.relation.relname in state.views:
            return []
        return [
            Hit(
                "rename-table",
                f"renaming {table} to {stmt.newname}: the old release keeps running during the "
                f"switch and the standby window, and every query naming {table} fails",
                f"rename, then `CREATE VIEW {table} AS SELECT * FROM {stmt.newname}` in the same "
                "transaction (a simple view is updatable) and drop the view in a contract "
                "migration once no release uses the old name",
            )
        ]
    return []


def _drop(stmt: Any, state: FileState) -> list[Hit]:
    if stmt.removeType == ObjectType.OBJECT_TABLE and not state.contract:
        names = [dropped_name(o) for o in stmt.objects]
        old = [n for n in names if not state.is_new(n.rsplit(".", 1)[-1])]
        if not old:
            return []
        return [
            Hit(
                "drop-table-in-expand",
                f"dropping {', '.join(old)} in an expand migration: the old release still runs "
                "during the switch and through the standby window, its queries on the table "
                "fail, and the rows are gone for a rollback",
                "stop using the table in a release first, then drop it in a contract migration "
                "(`-- conveyor:contract` or the contract/ directory)",
            )
        ]
    if stmt.removeType == ObjectType.OBJECT_INDEX:
        if stmt.concurrent:
            return _concurrently(state, "DROP INDEX CONCURRENTLY")
        names = [dropped_name(o) for o in stmt.objects]
        if all(n.rsplit(".", 1)[-1] in state.created_indexes for n in names):
            return []
        return [
            Hit(
                "drop-index-without-concurrently",
                f"DROP INDEX {', '.join(names)} takes an ACCESS EXCLUSIVE lock on its table: it "
                "waits for every running query on the table, and reads and writes queue behind "
                "it meanwhile",
                f"`DROP INDEX CONCURRENTLY` and {_NO_TRANSACTION}",
            )
        ]
    return []


def _index(stmt: Any, state: FileState) -> list[Hit]:
    if stmt.concurrent:
        return _concurrently(state, "CREATE INDEX CONCURRENTLY")
    if state.is_new(stmt.relation.relname):
        return []
    table = table_name(stmt.relation)
    return [
        Hit(
            "create-index-without-concurrently",
            f"CREATE INDEX on {table} takes a SHARE lock: inserts, updates and deletes on "
            f"{table} block for the whole index build",
            f"`CREATE INDEX CONCURRENTLY` (it builds without blocking writes) and "
            f"{_NO_TRANSACTION}",
        )
    ]


def _concurrently(state: FileState, what: str) -> list[Hit]:
    if not state.in_transaction:
        return []
    return [
        Hit(
            "concurrently-in-transaction",
            f"{what} cannot run inside a transaction block: PostgreSQL refuses it and the "
            "migration fails",
            f"{_NO_TRANSACTION} (goose runs each statement on its own then) and keep it out of "
            "BEGIN ... COMMIT",
        )
    ]
