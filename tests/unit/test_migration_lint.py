"""The migrations lint beyond single rules: allow comments, the report, the command line (its
exit codes and JSON through the real entry point), destructive Down sections, and a corpus of
realistic, safe migrations that must produce no finding (and that PostgreSQL really applies)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conveyor.core.migrations import Statement
from conveyor.migrations.goose import parse
from conveyor.migrations.lint import (
    destructive_statements,
    is_destructive,
    lint_migration,
    lint_paths,
    lint_text,
)

CORPUS = Path(__file__).parent / "lint_corpus"


CASES = Path(__file__).parent / "lint_cases"

RENAME = """\
-- +goose Up
SET lock_timeout = '5s';
{comment}
ALTER TABLE customers RENAME COLUMN name TO full_name;
ALTER TABLE orders RENAME COLUMN total TO amount;
"""


def _rules(findings: list[Any]) -> list[tuple[str, int]]:
    return [(f.rule, f.line) for f in findings]


# --- allow comments --------------------------------------------------------------------------


def test_an_allow_comment_with_a_reason_allows_the_next_statement_only() -> None:
    comment = "-- conveyor:allow rename-column because v41 reads both names through a view"
    report = lint_text("001_rename.sql", RENAME.format(comment=comment))
    assert _rules(report.findings) == [("rename-column", 5)]
    [allowed] = report.allowed
    assert allowed.as_dict() == {
        "rule": "rename-column",
        "path": "001_rename.sql",
        "line": 4,
        "reason": "v41 reads both names through a view",
        "comment_line": 3,
        "scope": "statement",
    }
    assert report.exit_code == 1


def test_an_allow_comment_without_a_reason_is_an_error_and_allows_nothing() -> None:
    report = lint_text("001_rename.sql", RENAME.format(comment="-- conveyor:allow rename-column"))
    assert _rules(report.findings) == [
        ("allow-without-reason", 3),
        ("rename-column", 4),
        ("rename-column", 5),
    ]
    assert report.allowed == []
    bare = lint_text("x.sql", RENAME.format(comment="-- conveyor:allow rename-column because "))
    assert _rules(bare.findings)[0] == ("allow-without-reason", 3)


def test_an_allow_comment_naming_no_rule_is_an_error() -> None:
    for comment in (
        "-- conveyor:allow renames because we know",
        "-- conveyor:allow syntax-error because the parser is wrong",
        "-- conveyor:allow because why not",
    ):
        report = lint_text("001_rename.sql", RENAME.format(comment=comment))
        assert _rules(report.findings)[0] == ("allow-unknown-rule", 3), comment
        assert report.allowed == []


def test_an_allow_comment_in_the_header_allows_the_whole_file() -> None:
    text = "-- conveyor:allow rename-column, missing-lock-timeout because one-off cleanup\n"
    text += RENAME.format(comment="").replace("SET lock_timeout = '5s';\n", "")
    report = lint_text("001_rename.sql", text)
    assert report.findings == []
    assert [(a.rule, a.line, a.scope) for a in report.allowed] == [
        ("rename-column", 4, "file"),
        ("missing-lock-timeout", 4, "file"),
        ("rename-column", 5, "file"),
        ("missing-lock-timeout", 5, "file"),
    ]


def test_an_allow_comment_that_allows_nothing_is_a_warning() -> None:
    comment = "-- conveyor:allow truncate because we will truncate later"
    report = lint_text("001_rename.sql", RENAME.format(comment=comment))
    assert ("allow-unused", 3) in _rules(report.findings)
    assert {f.severity for f in report.findings if f.rule == "allow-unused"} == {"warning"}


def test_an_allow_comment_inside_a_statement_applies_to_that_statement() -> None:
    text = (
        "-- +goose Up\nSET lock_timeout = '5s';\nALTER TABLE customers\n"
        "    -- conveyor:allow rename-column because the view keeps the old name\n"
        "    RENAME COLUMN name TO full_name;\n"
    )
    report = lint_text("001.sql", text)
    assert report.findings == []
    assert [(a.rule, a.line, a.comment_line) for a in report.allowed] == [("rename-column", 3, 4)]


# --- reading files ---------------------------------------------------------------------------


def test_a_syntax_error_names_the_line_inside_a_long_statement() -> None:
    text = "-- +goose Up\nCREATE TABLE t (\n    a int,\n    b int NOT NUL,\n    c int\n);\n"
    [finding] = lint_text("002_t.sql", text).findings
    assert (finding.rule, finding.line, finding.severity) == ("syntax-error", 4, "error")
    assert "syntax error at or near" in finding.message


def test_an_unclosed_quote_is_a_syntax_error_on_its_line() -> None:
    text = "-- +goose Up\nSELECT 1;\nINSERT INTO t VALUES ('open);\n"
    [finding] = lint_text("002_t.sql", text).findings
    assert (finding.rule, finding.line) == ("syntax-error", 3)


def test_a_plain_sql_file_is_all_up_and_autocommit() -> None:
    text = "CREATE INDEX CONCURRENTLY i ON orders (a);\nDROP TABLE t;\n"
    report = lint_text("cleanup.sql", text)
    assert _rules(report.findings) == [("drop-table-in-expand", 2), ("missing-lock-timeout", 2)]
    assert report.files[0].transaction is False
    assert lint_text("cleanup.sql", text, contract=True).exit_code == 0


def test_only_the_up_section_is_checked_and_the_down_is_summarized() -> None:
    text = "-- +goose Up\nCREATE TABLE t (a int);\n-- +goose Down\nDROP TABLE t;\n"
    report = lint_text("003_t.sql", text)
    assert report.findings == []
    [summary] = report.files
    assert summary.as_dict() == {
        "path": "003_t.sql",
        "kind": "expand",
        "transaction": True,
        "statements": 1,
        "destructive_down": [{"line": 4, "what": "drops table t"}],
    }


def test_files_are_linted_in_version_order_across_directories(tmp_path: Path) -> None:
    (tmp_path / "contract").mkdir()
    # 2 sorts after 10 by name, before it by version.
    (tmp_path / "2_check.sql").write_text(
        "-- +goose NO TRANSACTION\n-- +goose Up\nSET lock_timeout = '1s';\n"
        "ALTER TABLE t ADD CONSTRAINT c CHECK (a IS NOT NULL AND b IS NOT NULL) NOT VALID;\n"
        "ALTER TABLE t VALIDATE CONSTRAINT c;\n"
    )
    (tmp_path / "contract" / "10_not_null.sql").write_text(
        "-- +goose Up\nSET lock_timeout = '1s';\nALTER TABLE t ALTER COLUMN b SET NOT NULL;\n"
    )
    report = lint_paths([tmp_path])
    assert report.findings == []
    assert [(s.path.rsplit("/", 1)[1], s.kind) for s in report.files] == [
        ("2_check.sql", "expand"),
        ("10_not_null.sql", "contract"),
    ]


@dataclass(frozen=True)
class Migration:  # the shape of conveyor.core.migrations.Migration that the linter reads
    path: str
    text: str
    contract: bool = False


def test_lint_migration_is_what_the_deploy_checks_before_applying() -> None:
    check = Migration(
        "migrations/010_check.sql",
        "-- +goose NO TRANSACTION\n-- +goose Up\nSET lock_timeout = '1s';\n"
        "ALTER TABLE t ADD CONSTRAINT c CHECK (b IS NOT NULL) NOT VALID;\n"
        "ALTER TABLE t VALIDATE CONSTRAINT c;\nTRUNCATE t;\n",
    )
    pending = Migration(
        "migrations/contract/011_b.sql",
        "-- +goose Up\nSET lock_timeout = '1s';\nALTER TABLE t ALTER COLUMN b SET NOT NULL;\n"
        "-- conveyor:allow drop-table-in-expand, drop-column-in-expand because contract\n"
        "ALTER TABLE t DROP COLUMN a, ADD COLUMN c text;\n",
        contract=True,
    )
    # After the migration that validated the CHECK, its SET NOT NULL is safe (and that
    # migration's own TRUNCATE is not this one's finding); with no earlier migrations at all,
    # an error; with the history unknown (earlier not given), a warning: never a refusal for
    # what an earlier file may have made safe.
    assert [(f.rule, f.level) for f in lint_migration(pending, earlier=[])] == [
        ("set-not-null-without-check", "error"),
        ("allow-unused", "warning"),
    ]
    [unknown, _] = lint_migration(pending)
    assert (unknown.rule, unknown.level) == ("set-not-null-without-check", "warning")
    assert "earlier migration" in unknown.message
    items = lint_migration(pending, earlier=[check])
    assert [(i.rule, i.line, i.level, i.allowed) for i in items] == [
        ("allow-unused", 4, "warning", None)
    ]
    [allowed] = lint_text(
        "x.sql", RENAME.format(comment="-- conveyor:allow rename-column because v")
    ).allowed
    assert (allowed.level, allowed.allowed) == ("error", "v")


# --- destructive Down sections ---------------------------------------------------------------


def test_is_destructive_takes_strings_or_statements() -> None:
    assert is_destructive(["DROP TABLE orders"])
    assert is_destructive([Statement("ALTER TABLE orders DROP COLUMN note", 7)])
    assert is_destructive(["DELETE FROM sessions"])
    assert not is_destructive(["DELETE FROM sessions WHERE id = 1", "DROP INDEX i"])
    assert not is_destructive([Statement("ALTER TABLE orders ADD COLUMN note text", 7)])
    assert not is_destructive([])
    assert destructive_statements(["SELECT 1", "TRUNCATE a, b", "DROP SCHEMA s CASCADE"]) == [
        (1, "truncates a, b"),
        (2, "drops schema s"),
    ]
    # What cannot be parsed cannot be said to be harmless.
    assert destructive_statements(["DROPP TABLE x"])[0][1].startswith("does not parse")


# --- the corpus ------------------------------------------------------------------------------


def test_the_corpus_of_safe_migrations_has_no_finding() -> None:
    files = sorted(CORPUS.glob("*.sql"))
    assert len(files) >= 20
    report = lint_paths([CORPUS])
    assert report.findings == [], [f.as_dict() for f in report.findings]
    assert len(report.files) == len(files)
    # One deliberate, explained exception, carried for the audit log.
    assert [(a.rule, a.path.rsplit("/", 1)[1]) for a in report.allowed] == [
        ("change-column-type", "021_order_events_kind_longer.sql")
    ]
    kinds = {s.path.rsplit("/", 1)[1][:3]: s.kind for s in report.files}
    assert [v for v, kind in sorted(kinds.items()) if kind == "contract"] == ["014", "020", "025"]


@pytest.mark.postgres
def test_postgresql_applies_the_corpus_up_and_down(fresh_pg_url: str) -> None:
    """The corpus is real SQL: every Up in order, then every Down in reverse order."""
    files = sorted(CORPUS.glob("*.sql"))
    sources = [parse(f.read_text(), f.name, 0, f.name) for f in files]
    with psycopg.connect(fresh_pg_url, autocommit=True) as conn:
        for source in sources:
            _apply(conn, [s.sql for s in source.up], source.transaction)
        for source in reversed(sources):
            _apply(conn, [s.sql for s in source.down or ()], source.transaction)
        left = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert left == (0,)


def _apply(conn: psycopg.Connection[Any], statements: list[str], transaction: bool) -> None:
    if transaction:
        with conn.transaction():
            for sql in statements:
                conn.execute(sql.encode())
    else:
        for sql in statements:
            conn.execute(sql.encode())


# --- the command line ------------------------------------------------------------------------


def conveyor(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point, in `cwd`, not pointed at any project."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "CONVEYOR_PROJECT"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_exit_codes_through_the_command_line(tmp_path: Path) -> None:
    clean = conveyor(tmp_path, "migrations", "lint", str(CORPUS))
    assert clean.returncode == 0, clean.stderr
    assert "26 files, 0 error(s), 0 warning(s), 1 allowed" in clean.stdout
    bad = conveyor(tmp_path, "migrations", "lint", str(CASES / "truncate" / "bad.sql"))
    assert bad.returncode == 1
    assert "bad.sql:4: error truncate" in bad.stdout
    assert "instead:" in bad.stdout
    warned = conveyor(tmp_path, "migrations", "lint", str(CASES / "missing-lock-timeout"))
    assert warned.returncode == 0 and "warning missing-lock-timeout" in warned.stdout
    missing = conveyor(tmp_path, "migrations", "lint", str(CORPUS), "nowhere/")
    assert missing.returncode == 2
    assert "nowhere: no such file or directory" in missing.stderr
    assert missing.stdout == ""


def test_json_output(tmp_path: Path) -> None:
    proc = conveyor(
        tmp_path, "migrations", "lint", "--json", str(CASES / "rename-column" / "bad.sql")
    )
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert set(out) == {"exit", "errors", "warnings", "findings", "allowed", "files"}
    assert (out["exit"], out["errors"], out["warnings"], out["allowed"]) == (1, 1, 0, [])
    [finding] = out["findings"]
    assert set(finding) == {"rule", "severity", "path", "line", "message", "fix", "statement"}
    assert (finding["rule"], finding["line"]) == ("rename-column", 4)
    assert finding["statement"] == "ALTER TABLE customers RENAME COLUMN name TO full_name"
    assert out["files"][0]["kind"] == "expand"
    failed = conveyor(tmp_path, "migrations", "lint", "--json", "nowhere.sql")
    assert failed.returncode == 2
    assert json.loads(failed.stdout) == {
        "error": "nowhere.sql: no such file or directory",
        "exit": 2,
    }


def test_without_paths_it_lints_the_projects_migrations_dir(tmp_path: Path) -> None:
    (tmp_path / "conveyor.toml").write_text('[migrations]\ndir = "db/schema"\n')
    (tmp_path / "db" / "schema").mkdir(parents=True)
    (tmp_path / "db" / "schema" / "001_x.sql").write_text("-- +goose Up\nTRUNCATE t;\n")
    (tmp_path / "sub").mkdir()
    proc = conveyor(tmp_path / "sub", "migrations", "lint", "--json")
    assert proc.returncode == 1, proc.stderr
    assert [f["rule"] for f in json.loads(proc.stdout)["findings"]] == [
        "truncate",
        "missing-lock-timeout",
    ]
    # No conveyor.toml: ./migrations; none there either: exit 2 naming it.
    bare = tmp_path.parent / f"{tmp_path.name}-bare"
    (bare / "migrations").mkdir(parents=True)
    assert conveyor(bare, "migrations", "lint").returncode == 0
    (bare / "migrations").rmdir()
    gone = conveyor(bare, "migrations", "lint")
    assert gone.returncode == 2 and "migrations: no such file or directory" in gone.stderr
    (tmp_path / "conveyor.toml").write_text("[migrations\n")
    broken = conveyor(tmp_path, "migrations", "lint")
    assert broken.returncode == 2 and "conveyor.toml" in broken.stderr


def test_without_pglast_it_says_what_to_install(tmp_path: Path) -> None:
    # The real entry point, with pglast made unimportable (as on an install without the extra).
    code = (
        "import sys; sys.modules['pglast'] = None; sys.argv = ['conveyor', *sys.argv[1:]]\n"
        "from conveyor.cli.main import main; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "migrations", "lint", str(CORPUS)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "pip install 'conveyor-deploy[lint]'" in proc.stderr


def test_rules_are_listed(tmp_path: Path) -> None:
    proc = conveyor(tmp_path, "migrations", "lint", "--rules", "--json")
    assert proc.returncode == 0
    ids = [r["id"] for r in json.loads(proc.stdout)["rules"]]
    assert "set-not-null-without-check" in ids and "missing-lock-timeout" in ids
    assert conveyor(tmp_path, "migrations", "lint", "--help").returncode == 0
