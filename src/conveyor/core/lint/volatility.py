"""Is a column default computed once, or once per row?

Since PostgreSQL 11, `ADD COLUMN ... DEFAULT expr` with a non-volatile expr (a constant, now(),
CURRENT_TIMESTAMP, a cast, an operator over those) is evaluated once and stored in the catalog:
no row is touched. A volatile expr (random(), gen_random_uuid(), clock_timestamp(), nextval())
must give each row its own value, so the whole table is rewritten under an ACCESS EXCLUSIVE lock.

Functions are known by name here; the database's own catalog (pg_proc.provolatile) is not at
hand, so a function this module does not know is reported as unknown, not guessed.
"""

from __future__ import annotations

from typing import Any

from conveyor.core.lint.nodes import function_name, kind_is, nodes

VOLATILE = frozenset(
    {
        "random",
        "random_normal",
        "gen_random_uuid",
        "uuid_generate_v1",
        "uuid_generate_v1mc",
        "uuid_generate_v4",
        "uuidv4",
        "uuidv7",
        "clock_timestamp",
        "timeofday",
        "nextval",
        "setval",
        "gen_random_bytes",
        "txid_current",
        "pg_current_xact_id",
    }
)

# Immutable or stable functions people put in defaults: evaluated once by ADD COLUMN.
STABLE = frozenset(
    {
        "now",
        "statement_timestamp",
        "transaction_timestamp",
        "current_setting",
        "timezone",
        "date_trunc",
        "make_date",
        "make_time",
        "make_timestamp",
        "make_timestamptz",
        "make_interval",
        "to_timestamp",
        "to_date",
        "to_char",
        "to_json",
        "to_jsonb",
        "json_build_object",
        "jsonb_build_object",
        "json_build_array",
        "jsonb_build_array",
        "array_fill",
        "lower",
        "upper",
        "btrim",
        "ltrim",
        "rtrim",
        "concat",
        "concat_ws",
        "md5",
        "length",
        "abs",
        "round",
        "floor",
        "ceil",
        "inet",
        "point",
    }
)


def classify(expr: Any) -> tuple[list[str], list[str]]:
    """(volatile functions, functions of unknown volatility) that `expr` calls, by name."""
    volatile: list[str] = []
    unknown: list[str] = []
    for node in nodes(expr):
        if kind_is(node, "FuncCall"):
            name = function_name(node)
            if name in VOLATILE:
                volatile.append(name)
            elif name not in STABLE:
                unknown.append(name)
    return volatile, unknown
