"""Reading pglast parse trees.

pglast types every field of every node as optional, while the parser always fills the fields a
statement of that kind has (a CREATE TABLE has a relation). The checks therefore take nodes as
Any and test their kind by class name: isinstance would narrow them back to the optional types.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pglast import ast


def kind_is(node: Any, kind: str) -> bool:
    """Whether `node` is a pglast node of class `kind` (e.g. "CreateStmt")."""
    return type(node).__name__ == kind


def nodes(value: Any) -> Iterator[Any]:
    """Every node under `value` (itself included), depth first."""
    if isinstance(value, ast.Node):
        yield value
        for name in value:
            yield from nodes(getattr(value, name))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from nodes(item)


def function_name(call: Any) -> str:
    return str(call.funcname[-1].sval).lower()


def table_name(relation: Any) -> str:
    """schema.table as written (table alone when no schema was)."""
    if relation.schemaname:
        return f"{relation.schemaname}.{relation.relname}"
    return str(relation.relname)


def dropped_name(obj: Any) -> str:
    """The name of one object of a DROP (a tuple of String nodes: schema, name)."""
    if isinstance(obj, tuple | list):
        return ".".join(str(part.sval) for part in obj)
    return str(getattr(obj, "sval", obj))


def constant(node: Any) -> object:
    """The value of a string, integer or boolean constant; None for anything else."""
    if kind_is(node, "A_Const") and not node.isnull:
        value = node.val
        if kind_is(value, "String"):
            return value.sval
        if kind_is(value, "Integer"):
            return value.ival
        if kind_is(value, "Boolean"):
            return bool(value.boolval)
    return None
