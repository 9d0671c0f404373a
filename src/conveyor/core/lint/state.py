"""What the statements run so far established, for the checks of the next one.

Tables created in the same file are new and empty: nothing waits on them, nothing is rewritten.
A `SET lock_timeout` bounds the wait for a lock (SET LOCAL only until its transaction ends). A
CHECK (col IS NOT NULL) validated in this or an earlier file lets SET NOT NULL skip its scan
(PostgreSQL 12+). `FileState.record` adds a statement once its checks ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pglast.enums import AlterTableType as At
from pglast.enums import (
    BoolExprType,
    ConstrType,
    NullTestType,
    TransactionStmtKind,
    VariableSetKind,
)

from conveyor.core.lint.nodes import constant, function_name, kind_is, nodes


@dataclass
class RunState:
    """What the files linted so far established, in version order."""

    # (table, constraint) -> the columns a CHECK (col IS NOT NULL [AND ...]) added NOT VALID proves
    not_null_checks: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    # (table, column) proven NOT NULL by a validated CHECK
    validated: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class FileState:
    """One migration file (or one section of it) as its statements run."""

    run: RunState
    contract: bool = False
    # goose runs the whole file in one transaction unless it says NO TRANSACTION.
    transactional: bool = False
    created_tables: set[str] = field(default_factory=set)
    created_indexes: set[str] = field(default_factory=set)
    explicit_transaction: bool = False  # inside BEGIN ... COMMIT written in the file
    lock_timeout: bool = False  # SET lock_timeout (the session's)
    local_lock_timeout: bool = False  # SET LOCAL lock_timeout: until the transaction ends
    # (table, constraint) added NOT VALID in the transaction still open
    added_not_valid: set[tuple[str, str]] = field(default_factory=set)
    # Views the file creates anywhere: a table renamed with a view under its old name keeps
    # the old release working.
    views: set[str] = field(default_factory=set)

    @property
    def in_transaction(self) -> bool:
        return self.transactional or self.explicit_transaction

    def is_new(self, table: str) -> bool:
        return table in self.created_tables

    def record(self, stmt: Any) -> None:
        """Add what `stmt` establishes, after its checks ran."""
        if kind_is(stmt, "CreateStmt"):
            self.created_tables.add(stmt.relation.relname)
        elif kind_is(stmt, "CreateTableAsStmt"):
            self.created_tables.add(stmt.into.rel.relname)
        elif kind_is(stmt, "IndexStmt") and stmt.idxname:
            self.created_indexes.add(stmt.idxname)
        elif kind_is(stmt, "TransactionStmt"):
            self._transaction(stmt.kind)
        elif kind_is(stmt, "VariableSetStmt") and stmt.name == "lock_timeout":
            # SET ... = '0' and RESET turn the timeout off again.
            on = stmt.kind == VariableSetKind.VAR_SET_VALUE and _nonzero(stmt)
            if stmt.is_local:
                self.local_lock_timeout = on
            else:
                self.lock_timeout = on
        elif kind_is(stmt, "SelectStmt"):
            self._set_config(stmt)
        elif kind_is(stmt, "AlterTableStmt"):
            self._constraints(stmt)
        if not self.in_transaction:
            # Autocommit: the statement's transaction ended with it.
            self.added_not_valid.clear()
            self.local_lock_timeout = False

    def _transaction(self, kind: TransactionStmtKind) -> None:
        if kind in (TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START):
            self.explicit_transaction = True
        elif kind in (
            TransactionStmtKind.TRANS_STMT_COMMIT,
            TransactionStmtKind.TRANS_STMT_ROLLBACK,
        ):
            self.explicit_transaction = False
            self.added_not_valid.clear()
            self.local_lock_timeout = False

    def _set_config(self, stmt: Any) -> None:
        # SELECT set_config('lock_timeout', '5s', is_local)
        for node in nodes(stmt.targetList):
            if kind_is(node, "FuncCall") and function_name(node) == "set_config":
                args = [constant(a) for a in node.args or ()]
                if len(args) == 3 and args[0] == "lock_timeout":
                    on = args[1] is not None and args[1] not in _OFF
                    if args[2] is True:
                        self.local_lock_timeout = on
                    else:
                        self.lock_timeout = on

    def _constraints(self, stmt: Any) -> None:
        table = stmt.relation.relname
        for cmd in stmt.cmds:
            if cmd.subtype == At.AT_AddConstraint and kind_is(cmd.def_, "Constraint"):
                con = cmd.def_
                if con.contype == ConstrType.CONSTR_CHECK:
                    columns = _not_null_columns(con.raw_expr)
                    if con.skip_validation:
                        if columns and con.conname:
                            self.run.not_null_checks[(table, con.conname)] = columns
                    else:
                        self.run.validated.update((table, c) for c in columns)
                if con.skip_validation and con.conname:
                    self.added_not_valid.add((table, con.conname))
            elif cmd.subtype == At.AT_ValidateConstraint:
                columns = self.run.not_null_checks.get((table, cmd.name), frozenset())
                self.run.validated.update((table, c) for c in columns)


_OFF: tuple[object, ...] = ("0", 0, "")


def _nonzero(stmt: Any) -> bool:
    args = list(stmt.args or [])
    return bool(args) and constant(args[0]) not in _OFF


def _not_null_columns(expr: Any) -> frozenset[str]:
    """The columns `col IS NOT NULL [AND other IS NOT NULL ...]` proves not null."""
    if kind_is(expr, "NullTest") and expr.nulltesttype == NullTestType.IS_NOT_NULL:
        arg = expr.arg
        if kind_is(arg, "ColumnRef") and kind_is(arg.fields[-1], "String"):
            return frozenset({arg.fields[-1].sval})
    if kind_is(expr, "BoolExpr") and expr.boolop == BoolExprType.AND_EXPR:
        found: set[str] = set()
        for arg in expr.args:
            found |= _not_null_columns(arg)
        return frozenset(found)
    return frozenset()
