"""Commands answer at once: what `--version`, `--help` and opening an up-to-date database import.

Speed itself is measured in benchmarks/cli.py, never asserted here: these check the imports that
made it slow (issue 7), in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.store.db import ALEMBIC_DIR, Store, schema_heads

DATABASE_LIBRARIES = ("sqlalchemy", "alembic", "psycopg")


def imported_by(code: str, cwd: Path) -> set[str]:
    """Top-level packages a fresh interpreter has imported after running `code`."""
    probe = (
        "import sys, json\n"
        f"{code}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


def cli(argv: list[str]) -> str:
    return (
        f"sys.argv = ['conveyor', *{argv!r}]\n"
        "from conveyor.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
    )


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["agent", "--help"]])
def test_version_and_help_import_no_database_library(argv: list[str], tmp_path: Path) -> None:
    modules = imported_by(cli(argv), tmp_path)
    assert "conveyor" in modules
    assert not modules & {*DATABASE_LIBRARIES, "rich"}, sorted(modules)


def test_version_does_not_even_load_typer(tmp_path: Path) -> None:
    assert "typer" not in imported_by(cli(["--version"]), tmp_path)


def test_the_heads_are_read_from_the_migration_scripts() -> None:
    assert schema_heads() == frozenset({"0002"})


def test_heads_of_a_branch_and_of_scripts_that_do_not_read_plainly(tmp_path: Path) -> None:
    for name, revision, down in (("a", "0001", "None"), ("b", "0002", '"0001"')):
        (tmp_path / f"{name}.py").write_text(
            f'revision: str = "{revision}"\ndown_revision: str | None = {down}\n'
        )
    assert schema_heads(tmp_path) == frozenset({"0002"})
    (tmp_path / "c.py").write_text('revision = "0003"\ndown_revision = ("0001", "0002")\n')
    assert schema_heads(tmp_path) is None  # a merge: Alembic decides


def test_alembic_is_imported_only_when_the_schema_is_not_at_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    opening = f"from conveyor.store.db import Store\nStore.open({url!r}).close()"
    assert "alembic" in imported_by(opening, tmp_path)  # a new database: created by Alembic
    assert "alembic" not in imported_by(opening, tmp_path)  # at head: one plain query
    store = Store.open(url)  # and the schema is whole
    try:
        assert store.list_deployments("shop", "dev") == []
    finally:
        store.close()


def test_a_database_behind_head_is_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    Store.open(url).close()
    import sqlite3

    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("UPDATE conveyor_alembic_version SET version_num = '0001'")
        db.execute("DROP TABLE instances")
        db.execute(
            "CREATE TABLE instances (app VARCHAR(200) NOT NULL, environment VARCHAR(200) NOT NULL,"
            " service VARCHAR(200) NOT NULL, color VARCHAR(16) NOT NULL, version VARCHAR(64),"
            " digest VARCHAR(80), role VARCHAR(16), pid INTEGER, pgid INTEGER, port INTEGER,"
            " proc_start BIGINT, started_at DATETIME, standby_until DATETIME,"
            " deployment_id INTEGER, PRIMARY KEY (app, environment, service, color))"
        )
    assert "alembic" in imported_by(
        f"from conveyor.store.db import Store\nStore.open({url!r}).close()", tmp_path
    )
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT version_num FROM conveyor_alembic_version").fetchall() == [
            ("0002",)
        ]


def test_alembic_dir_is_where_the_heads_come_from() -> None:
    assert (ALEMBIC_DIR / "versions").is_dir()
