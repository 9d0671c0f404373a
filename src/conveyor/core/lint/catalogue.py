"""The lint's rules by id, and what one finding says.

Ids are ours, kebab-case, stable: they appear in `-- conveyor:allow RULE because ...` comments,
in the JSON output and in the audit log, so a rule is never renamed once released.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    summary: str
    # False for findings about the file itself (a comment, the parser): no allow comment hides them.
    allowable: bool = True


RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        Rule("drop-column-in-expand", ERROR, "a column dropped in an expand migration"),
        Rule("drop-table-in-expand", ERROR, "a table dropped in an expand migration"),
        Rule("rename-column", ERROR, "a column renamed"),
        Rule("rename-table", ERROR, "a table renamed"),
        Rule("add-column-not-null-no-default", ERROR, "a NOT NULL column added without a default"),
        Rule(
            "add-column-volatile-default",
            ERROR,
            "a column added with a default computed per row (the table is rewritten)",
        ),
        Rule("change-column-type", ERROR, "a column's type changed"),
        Rule(
            "set-not-null-without-check",
            ERROR,
            "SET NOT NULL without a validated CHECK (col IS NOT NULL) before it",
        ),
        Rule("check-without-not-valid", ERROR, "a CHECK constraint added without NOT VALID"),
        Rule("foreign-key-without-not-valid", ERROR, "a foreign key added without NOT VALID"),
        Rule(
            "validate-in-same-transaction",
            ERROR,
            "VALIDATE CONSTRAINT in the transaction that added the constraint NOT VALID",
        ),
        Rule(
            "create-index-without-concurrently",
            ERROR,
            "CREATE INDEX on an existing table without CONCURRENTLY",
        ),
        Rule("drop-index-without-concurrently", ERROR, "DROP INDEX without CONCURRENTLY"),
        Rule(
            "concurrently-in-transaction",
            ERROR,
            "CONCURRENTLY inside a transaction (PostgreSQL refuses it)",
        ),
        Rule(
            "unique-constraint-without-index",
            ERROR,
            "a UNIQUE or PRIMARY KEY constraint that builds its index under the table's lock",
        ),
        Rule(
            "missing-lock-timeout",
            WARNING,
            "an ACCESS EXCLUSIVE lock taken with no lock_timeout set in the file",
        ),
        Rule("truncate", ERROR, "TRUNCATE"),
        Rule("drop-database", ERROR, "DROP DATABASE"),
        Rule("syntax-error", ERROR, "a statement PostgreSQL cannot parse", allowable=False),
        Rule("goose-annotation", ERROR, "a goose annotation out of place", allowable=False),
        Rule(
            "allow-without-reason",
            ERROR,
            "a conveyor:allow comment without `because <reason>`",
            allowable=False,
        ),
        Rule("allow-unknown-rule", ERROR, "a conveyor:allow comment naming no rule", False),
        Rule("allow-unused", WARNING, "a conveyor:allow comment that allowed nothing", False),
    )
}


@dataclass(frozen=True)
class Hit:
    """What a rule found in one statement, before it is placed in a file."""

    rule: str
    message: str  # what locks or breaks, and for how long
    fix: str  # the safe alternative
    severity: str = ""  # empty: the rule's own

    @property
    def level(self) -> str:
        return self.severity or RULES[self.rule].severity


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    path: str
    line: int
    message: str
    fix: str
    statement: str  # the statement's first line, for people
    # Not allowed (see conveyor.migrations.lint.Allowed for the allowed ones): the deploy reads
    # `level` and `allowed` of whatever the linter returns.
    allowed: None = None

    @property
    def level(self) -> str:
        return self.severity

    def as_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "path": self.path,
            "line": self.line,
            "message": self.message,
            "fix": self.fix,
            "statement": self.statement,
        }
