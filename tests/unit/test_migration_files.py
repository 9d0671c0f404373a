"""goose-format migration files: sections, statement splitting, line numbers, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.migrations.goose import MigrationFileError, load, parse, parse_filename


def parsed(text: str, contract: bool = False):  # type: ignore[no-untyped-def]
    return parse(text, "migrations/001_x.sql", 1, "x", contract)


def test_up_and_down_sections_split_into_statements_with_their_lines() -> None:
    m = parsed(
        "-- +goose Up\n"
        "CREATE TABLE users (id int);\n"
        "\n"
        "-- a comment\n"
        "INSERT INTO users\n"
        "  VALUES (1);\n"
        "-- +goose Down\n"
        "DROP TABLE users;\n"
    )
    assert [(s.sql, s.line) for s in m.up] == [
        ("CREATE TABLE users (id int)", 2),
        ("INSERT INTO users\n  VALUES (1)", 5),
    ]
    assert m.down is not None
    assert [(s.sql, s.line) for s in m.down] == [("DROP TABLE users", 8)]
    assert m.transaction and not m.contract and m.kind == "expand"


def test_semicolons_inside_quotes_dollar_quotes_and_comments_do_not_split() -> None:
    m = parsed(
        "-- +goose Up\n"
        "INSERT INTO t VALUES ('a;b', 'it''s;', E'x\\';y');\n"
        'CREATE TABLE "we;ird" (id int); -- trailing; comment\n'
        "CREATE FUNCTION f() RETURNS int AS $body$\n"
        "BEGIN\n"
        "  RETURN 1; -- inside\n"
        "END;\n"
        "$body$ LANGUAGE plpgsql;\n"
        "SELECT $$one;two$$, /* a; /* nested; */ comment */ 1;\n"
    )
    assert [s.line for s in m.up] == [2, 3, 4, 9]
    assert m.up[0].sql == "INSERT INTO t VALUES ('a;b', 'it''s;', E'x\\';y')"
    assert m.up[1].sql == 'CREATE TABLE "we;ird" (id int)'
    assert m.up[2].sql.endswith("$body$ LANGUAGE plpgsql")
    assert "RETURN 1;" in m.up[2].sql
    assert m.up[3].sql.startswith("SELECT $$one;two$$")


def test_statement_begin_end_keeps_a_block_whole() -> None:
    m = parsed(
        "-- +goose Up\n"
        "-- +goose StatementBegin\n"
        "CREATE FUNCTION g() RETURNS int AS '\n"
        "  SELECT 1;\n"
        "' LANGUAGE sql;\n"
        "-- +goose StatementEnd\n"
        "SELECT 2;\n"
    )
    assert [s.line for s in m.up] == [3, 7]
    assert m.up[0].sql.startswith("CREATE FUNCTION g()")
    assert m.up[0].sql.endswith("LANGUAGE sql;")


def test_no_transaction_contract_mark_and_missing_down() -> None:
    m = parsed(
        "-- conveyor:contract\n-- +goose NO TRANSACTION\n-- +goose Up\nCREATE INDEX CONCURRENTLY i ON t (a);\n"
    )
    assert not m.transaction
    assert m.contract and m.kind == "contract"
    assert m.down is None
    assert parsed("-- +goose Up\nSELECT 1;\n", contract=True).contract


def test_a_statement_without_final_semicolon_is_kept() -> None:
    m = parsed("-- +goose Up\nSELECT 1\n-- +goose Down\nSELECT 2")
    assert [s.sql for s in m.up] == ["SELECT 1"]
    assert m.down is not None and [s.sql for s in m.down] == ["SELECT 2"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("SELECT 1;\n", 1, "SQL before -- +goose Up"),
        ("-- comment only\n", 1, "no '-- +goose Up' section"),
        ("-- +goose Up\nSELECT 1;\n-- +goose Up\n", 3, "a second -- +goose Up"),
        ("-- +goose Down\nSELECT 1;\n", 1, "Down before any"),
        ("-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n", 2, "without a StatementEnd"),
        ("-- +goose Up\n-- +goose StatementEnd\n", 2, "without a StatementBegin"),
        ("-- +goose Up\n-- +goose Upp\n", 2, "unknown annotation '-- +goose Upp'"),
        ("-- +goose Up\n-- +goose ENVSUB ON\n", 2, "ENVSUB is not supported"),
        ("-- +goose Up\nSELECT 1;\nSELECT 'open\n;\n", 3, "string opened here is never closed"),
        ("-- +goose Up\n\nSELECT $f$ x;\n", 3, "dollar quote $f$"),
        ("-- +goose Up\n/* x\n", 2, "comment /* is never closed"),
        ("-- +goose Up\nSELECT 1\n-- +goose StatementBegin\n", 2, "not ended with ';'"),
    ],
)
def test_bad_files_name_file_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(MigrationFileError) as caught:
        parsed(text)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"migrations/001_x.sql:{line}: ")
    assert words in str(caught.value)


def test_filenames() -> None:
    assert parse_filename("001_create_users.sql") == (1, "create_users")
    assert parse_filename("20240101120000_add_email.sql") == (20240101120000, "add_email")
    assert parse_filename("create_users.sql") is None
    assert parse_filename("001_x.sql.bak") is None


def test_load_reads_contract_dir_and_refuses_bad_names_and_duplicates(tmp_path: Path) -> None:
    d = tmp_path / "migrations"
    (d / "contract").mkdir(parents=True)
    (d / "002_b.sql").write_text("-- +goose Up\nSELECT 2;\n")
    (d / "001_a.sql").write_text("-- +goose Up\nSELECT 1;\n")
    (d / "contract" / "003_c.sql").write_text("-- +goose Up\nSELECT 3;\n")
    (d / "README.md").write_text("not a migration")
    found = load(d, shown_from=tmp_path)
    assert [(m.version, m.contract, m.path) for m in found] == [
        (1, False, "migrations/001_a.sql"),
        (2, False, "migrations/002_b.sql"),
        (3, True, "migrations/contract/003_c.sql"),
    ]
    (d / "contract" / "002_again.sql").write_text("-- +goose Up\nSELECT 2;\n")
    with pytest.raises(MigrationFileError, match=r"version 2 is also migrations/002_b\.sql"):
        load(d, shown_from=tmp_path)
    (d / "contract" / "002_again.sql").unlink()
    (d / "x.sql").write_text("-- +goose Up\n")
    with pytest.raises(MigrationFileError, match=r"migrations/x.sql: not a migration's name"):
        load(d, shown_from=tmp_path)
    with pytest.raises(MigrationFileError, match="no such directory"):
        load(tmp_path / "nope", shown_from=tmp_path)
