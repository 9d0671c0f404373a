"""Lint SQL migrations for blue/green safety, without a database (pglast parses every statement).

API (what `conveyor migrate` and the deploy call before applying anything):

    from conveyor.migrations.lint import lint_paths, lint_text, is_destructive

    report = lint_paths([Path("migrations")])   # files and directories; LintPathError if unreadable
    report = lint_migrations(migrations)        # parsed files: anything with .path, .text, .contract
    report = lint_text("001_init.sql", text)    # one file's text; contract=None: from its marker
    report.findings    # [Finding(rule, severity, path, line, message, fix, statement)]
    report.allowed     # [Allowed(rule, path, line, reason, comment_line, scope)]: for the audit log
    report.files       # [FileSummary(path, kind, transaction, statements, destructive_down)]
    report.exit_code   # 1 when an error-level finding remains, else 0
    is_destructive(migration.down)  # True when a Down section loses data (statements or strings)

    for item in lint_migration(m, earlier=the_migrations_before_m):   # applied ones included
        item.rule, item.path, item.line, item.level   # "error" / "warning"
        item.allowed                                  # the reason of an allowed one, else None

Each of them raises LintUnavailable when pglast (`pip install 'conveyor-deploy[lint]'`) is not
installed. Lint the whole migrations directory, not only the pending files: a CHECK validated by
an applied migration is what lets a pending SET NOT NULL skip its scan. Files are linted in
version order (the NNN of NNN_name.sql), sharing what earlier files established.

What is linted: the `-- +goose Up` section of a goose file (a file without goose annotations is
all "up"); Down sections are only parsed, and their destructive statements (DROP TABLE, DROP
COLUMN, TRUNCATE, DELETE without WHERE, ...) listed in the file's summary. A migration is a
contract one when it carries `-- conveyor:contract` or sits in a `contract/` directory: it may
drop columns and tables, an expand one may not. `-- +goose NO TRANSACTION` files run each
statement on its own (CONCURRENTLY needs that); other goose files run in one transaction.

Allow comments: `-- conveyor:allow RULE[, RULE...] because <reason>` on its own line allows
those rules for the next statement (or the statement the comment sits in); in a goose file's
header, above `-- +goose Up`, it allows them for the whole file. A missing reason or an unknown
rule is an error, an allowance that allowed nothing a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.core.lint.catalogue import ERROR, RULES, WARNING, Finding, Hit
from conveyor.core.migrations import Statement

if TYPE_CHECKING:
    from conveyor.core.lint.state import RunState

INSTALL_HINT = "pip install 'conveyor-deploy[lint]'"

_GOOSE = re.compile(r"^\s*--\s*\+goose\b", re.IGNORECASE)
_GOOSE_UP = re.compile(r"^\s*--\s*\+goose\s+up\s*$", re.IGNORECASE)
_ALLOW = re.compile(
    r"^\s*--\s*conveyor:allow\b\s*(?P<rules>[A-Za-z0-9_\-\s,]*?)\s*"
    r"(?:\bbecause\b\s*(?P<reason>.*?))?\s*$",
    re.IGNORECASE,
)
_VERSION = re.compile(r"^(\d+)_")


class LintUnavailable(Exception):
    """pglast is not installed."""

    def __init__(self) -> None:
        super().__init__(f"the migrations lint needs pglast: {INSTALL_HINT}")


class LintPathError(Exception):
    """A path to lint cannot be read; the message names it."""


@dataclass(frozen=True)
class Allowed:
    """A finding an allow comment turned off: what the deploy writes into the audit log."""

    rule: str
    path: str
    line: int  # the statement's
    reason: str
    comment_line: int
    scope: str  # "statement" or "file"
    severity: str = ERROR  # the allowed finding's

    @property
    def level(self) -> str:
        return self.severity

    @property
    def allowed(self) -> str:
        """The reason (a Finding's `allowed` is None): one loop tells them apart."""
        return self.reason

    def as_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "path": self.path,
            "line": self.line,
            "reason": self.reason,
            "comment_line": self.comment_line,
            "scope": self.scope,
        }


@dataclass(frozen=True)
class FileSummary:
    path: str
    kind: str  # "expand" or "contract"
    transaction: bool  # False: NO TRANSACTION, or a plain SQL file
    statements: int  # in the Up section
    destructive_down: tuple[tuple[int, str], ...] = ()  # (line, what it loses)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "kind": self.kind,
            "transaction": self.transaction,
            "statements": self.statements,
            "destructive_down": [{"line": ln, "what": what} for ln, what in self.destructive_down],
        }


@dataclass
class LintReport:
    findings: list[Finding] = field(default_factory=list)
    allowed: list[Allowed] = field(default_factory=list)
    files: list[FileSummary] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def for_path(self, path: str) -> LintReport:
        """The part of the report about one file."""
        return LintReport(
            [f for f in self.findings if f.path == path],
            [a for a in self.allowed if a.path == path],
            [s for s in self.files if s.path == path],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "exit": self.exit_code,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.as_dict() for f in self.findings],
            "allowed": [a.as_dict() for a in self.allowed],
            "files": [s.as_dict() for s in self.files],
        }


def available() -> bool:
    try:
        import pglast  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> None:
    if not available():
        raise LintUnavailable


# --- reading a file: goose sections and statements -----------------------------------------


def _end_line(statement: Statement) -> int:
    return statement.line + statement.sql.count("\n")


@dataclass
class _Source:
    up: list[Statement]
    down: list[Statement]
    transaction: bool
    contract: bool
    up_line: int  # the `-- +goose Up` line; 0 in a plain SQL file
    problems: list[tuple[str, int, str]]  # (rule, line, message)


def _read(text: str, path: str) -> _Source:
    """The goose structure of a migration file, read by the runner's own reader
    (conveyor.migrations.goose): the lint checks the statements the runner will run. A file
    without goose annotations is read as one Up section, run statement by statement."""
    from conveyor.migrations.goose import MigrationFileError, parse

    lines = text.split("\n")
    goose = any(_GOOSE.match(raw) for raw in lines)
    up_line = next((n for n, raw in enumerate(lines, 1) if _GOOSE_UP.match(raw)), 0)
    shift = 0 if goose else 1
    try:
        migration = parse(text if goose else "-- +goose Up\n" + text, path, 0, path)
    except MigrationFileError as exc:
        rule = "syntax-error" if "never closed" in exc.message else "goose-annotation"
        line = max(1, (exc.line or 1) - shift)
        return _Source([], [], goose, False, up_line, [(rule, line, exc.message)])

    def moved(statements: Iterable[Statement] | None) -> list[Statement]:
        return [Statement(s.sql, s.line - shift) for s in statements or ()]

    return _Source(
        moved(migration.up),
        moved(migration.down),
        goose and migration.transaction,
        migration.contract,
        up_line,
        [],
    )


def _location(exc: Exception) -> int:
    args: tuple[object, ...] = exc.args
    return args[1] if len(args) > 1 and isinstance(args[1], int) else 0


# --- allow comments --------------------------------------------------------------------------


@dataclass
class _Allow:
    rules: tuple[str, ...]
    reason: str
    line: int
    scope: str
    target: Statement | None = None
    used: bool = False


def _allows(
    text: str, source: _Source, path: str, findings: list[Finding]
) -> tuple[list[_Allow], list[_Allow]]:
    """(file-wide allowances, statement allowances); bad comments become findings."""
    whole: list[_Allow] = []
    per_statement: list[_Allow] = []
    statements = source.up + source.down
    for number, raw in enumerate(text.split("\n"), 1):
        match = _ALLOW.match(raw)
        if match is None:
            continue
        rules = tuple(r for r in re.split(r"[\s,]+", match.group("rules") or "") if r)
        reason = (match.group("reason") or "").strip()
        bad = [r for r in rules if r not in RULES or not RULES[r].allowable]
        if not rules or bad:
            named = ", ".join(bad) if bad else "nothing"
            findings.append(
                _file_finding(
                    "allow-unknown-rule",
                    path,
                    number,
                    f"the allow comment names {named}: not a rule that can be allowed",
                    "name rule ids from `conveyor migrations lint --rules`",
                    raw,
                )
            )
            continue
        if not reason:
            findings.append(
                _file_finding(
                    "allow-without-reason",
                    path,
                    number,
                    f"allowing {', '.join(rules)} needs a reason: it goes into the audit log",
                    f"-- conveyor:allow {', '.join(rules)} because <why this is safe here>",
                    raw,
                )
            )
            continue
        if source.up_line and number < source.up_line:
            whole.append(_Allow(rules, reason, number, "file"))
            continue
        target = next((s for s in statements if s.line <= number <= _end_line(s)), None)
        if target is None:
            later = [s for s in statements if s.line > number]
            target = min(later, key=lambda s: s.line) if later else None
        per_statement.append(_Allow(rules, reason, number, "statement", target))
    return whole, per_statement


def _file_finding(rule: str, path: str, line: int, message: str, fix: str, raw: str) -> Finding:
    return Finding(rule, RULES[rule].severity, path, line, message, fix, _first_line(raw))


def _first_line(sql: str, width: int = 100) -> str:
    first = sql.strip().split("\n", 1)[0].strip()
    return first if len(first) <= width else first[: width - 1] + "…"


# --- linting -----------------------------------------------------------------------------------


def _version(path: str) -> tuple[int, str]:
    match = _VERSION.match(Path(path).name)
    return (int(match.group(1)) if match else 1 << 62, path)


def lint_text(name: str, text: str, contract: bool | None = None) -> LintReport:
    """Lint one migration file's text; `name` is how findings name the file. `contract`: None
    reads it from the file (its marker, or a parent directory named contract/)."""
    return lint_files([(name, text)], contract)


def lint_migrations(migrations: Iterable[Any]) -> LintReport:
    """Lint parsed migration files (conveyor.core.migrations.Migration, or anything with `.path`,
    `.text` and `.contract`) in version order, sharing what earlier ones established."""
    return _lint_all(
        (str(m.path), str(m.text), True if getattr(m, "contract", False) else None)
        for m in migrations
    )


def lint_migration(migration: Any, earlier: Iterable[Any] | None = None) -> list[Finding | Allowed]:
    """What the deploy checks before applying `migration`: its findings, then its allowed
    findings (each with .rule, .path, .line, .message or .reason, .level, .allowed).

    `earlier`: the migrations before it, applied ones included; what they established counts
    (a CHECK validated there lets this one SET NOT NULL), their own findings do not. Without
    them (None) that history is unknown: a SET NOT NULL without a CHECK in this file is then a
    warning, not an error, so that a deploy is not refused for what an earlier file made safe."""
    path = str(migration.path)
    report = lint_migrations([*(earlier or ()), migration]).for_path(path)
    findings = report.findings
    if earlier is None:
        findings = [
            replace(
                f,
                severity=WARNING,
                message=f"{f.message} (unless a CHECK validated by an earlier migration proves it)",
            )
            if f.rule == "set-not-null-without-check"
            else f
            for f in findings
        ]
    return [*findings, *report.allowed]


def lint_files(items: Iterable[tuple[str, str]], contract: bool | None = None) -> LintReport:
    """Lint (name, text) pairs in version order, sharing what earlier files established."""
    return _lint_all((name, text, contract) for name, text in items)


def _lint_all(items: Iterable[tuple[str, str, bool | None]]) -> LintReport:
    _require()
    from conveyor.core.lint.state import RunState

    run = RunState()
    report = LintReport()
    for path, text, contract in sorted(items, key=lambda item: _version(item[0])):
        _lint_one(path, text, contract, run, report)
    return report


def _lint_one(
    path: str, text: str, contract: bool | None, run: RunState, report: LintReport
) -> None:
    from conveyor.core.lint.destructive import destroys
    from conveyor.core.lint.rules import check
    from conveyor.core.lint.state import FileState
    from conveyor.migrations.goose import CONTRACT_DIR

    source = _read(text, path)
    if contract is None:
        contract = source.contract or Path(path).parent.name == CONTRACT_DIR
    findings: list[Finding] = [
        _file_finding(rule, path, line, message, _PROBLEM_FIX[rule], "")
        for rule, line, message in source.problems
    ]
    whole, per_statement = _allows(text, source, path, findings)
    up = [
        (statement, node) for statement in source.up for node in _parsed(statement, path, findings)
    ]
    state = FileState(run, contract=contract, transactional=source.transaction)
    state.views = {node.view.relname for _, node in up if type(node).__name__ == "ViewStmt"}
    for statement, node in up:
        hits = check(node, state)
        state.record(node)
        for hit in hits:
            _place(hit, statement, path, whole + per_statement, findings, report)
    destructive: list[tuple[int, str]] = []
    for statement in source.down:
        for node in _parsed(statement, path, findings):
            what = destroys(node)
            if what:
                destructive.append((statement.line, what))
    for allow in whole + per_statement:
        if not allow.used:
            where = "this file" if allow.scope == "file" else "the statement it precedes"
            findings.append(
                _file_finding(
                    "allow-unused",
                    path,
                    allow.line,
                    f"nothing in {where} is flagged {' or '.join(allow.rules)}: the comment "
                    "allows nothing",
                    "remove it, or put it on the line above the statement it is about",
                    f"-- conveyor:allow {', '.join(allow.rules)}",
                )
            )
    report.findings.extend(sorted(findings, key=lambda f: f.line))
    report.files.append(
        FileSummary(
            path,
            "contract" if contract else "expand",
            source.transaction,
            len(source.up),
            tuple(destructive),
        )
    )


_PROBLEM_FIX = {
    "goose-annotation": "start the SQL with `-- +goose Up`, then an optional `-- +goose Down`",
    "syntax-error": "fix the statement: PostgreSQL would refuse it the same way",
}


def _parsed(statement: Statement, path: str, findings: list[Finding]) -> list[Any]:
    """The statement's parse trees (one, or none when it does not parse: a finding then)."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        return [raw.stmt for raw in parse_sql(statement.sql)]
    except ParseError as exc:
        offset = _location(exc)
        line = statement.line + statement.sql.count("\n", 0, offset)
        findings.append(
            Finding(
                "syntax-error",
                ERROR,
                path,
                line,
                f"PostgreSQL's parser: {exc.args[0]}",
                _PROBLEM_FIX["syntax-error"],
                _first_line(statement.sql),
            )
        )
        return []


def _place(
    hit: Hit,
    statement: Statement,
    path: str,
    allows: Sequence[_Allow],
    findings: list[Finding],
    report: LintReport,
) -> None:
    for allow in allows:
        if hit.rule in allow.rules and (allow.scope == "file" or allow.target is statement):
            allow.used = True
            report.allowed.append(
                Allowed(
                    hit.rule,
                    path,
                    statement.line,
                    allow.reason,
                    allow.line,
                    allow.scope,
                    hit.level,
                )
            )
            return
    findings.append(
        Finding(
            hit.rule,
            hit.level,
            path,
            statement.line,
            hit.message,
            hit.fix,
            _first_line(statement.sql),
        )
    )


def collect(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """(name, text) of every .sql file under `paths` (files or directories, recursively).

    Raises LintPathError for a path that does not exist or cannot be read; nothing is linted then.
    """
    found: list[tuple[str, str]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.sql") if p.is_file())
        elif path.exists():
            files = [path]
        else:
            raise LintPathError(f"{path}: no such file or directory")
        for file in files:
            try:
                found.append((str(file), file.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise LintPathError(f"{file}: cannot be read: {exc}") from None
    return found


def lint_paths(paths: Iterable[Path]) -> LintReport:
    """Lint every .sql file under `paths` (see `collect`), in version order."""
    _require()
    return lint_files(collect(paths))


# --- destructive Down sections ----------------------------------------------------------------


def destructive_statements(statements: Iterable[object]) -> list[tuple[int, str]]:
    """(index, what it loses) of each statement that throws data away. A statement is a string
    or anything with `.sql` (conveyor.core.migrations.Statement); one that does not parse counts
    as destructive, since nobody can say it is not."""
    _require()
    from pglast import parse_sql
    from pglast.parser import ParseError

    from conveyor.core.lint.destructive import destroys

    found: list[tuple[int, str]] = []
    for index, statement in enumerate(statements):
        sql = statement if isinstance(statement, str) else str(getattr(statement, "sql", ""))
        try:
            trees = [raw.stmt for raw in parse_sql(sql)]
        except ParseError as exc:
            found.append((index, f"does not parse ({exc.args[0]})"))
            continue
        found.extend((index, what) for what in map(destroys, trees) if what)
    return found


def is_destructive(statements: Iterable[object]) -> bool:
    """True when running `statements` (a Down section) loses data: see destructive_statements."""
    return bool(destructive_statements(statements))
