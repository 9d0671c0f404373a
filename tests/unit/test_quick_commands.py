"""Commands answer at once: what `--version`, `--help` and opening an up-to-date database import.

Speed itself is measured in benchmarks/cli.py, never asserted here: these check the imports that
made it slow (issue 7), in fresh interpreters."""

from __future__ import annotations

import json
import re
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


def modules_after(code: str, cwd: Path) -> set[str]:
    """Every module a fresh interpreter has imported after running `code`, but the standard
    library's (and what `site` loads from .pth files)."""
    probe = (
        "import sys, json\n"
        f"{code}\n"
        "print(json.dumps(sorted(m for m in sys.modules"
        " if m.split('.')[0] not in sys.stdlib_module_names)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1])) - {"__main__", "_distutils_hack"}


# What typer itself needs: `--help` may import it and nothing else from outside conveyor.
TYPER = ("typer", "annotated_doc", "shellingham", "typing_extensions")
# conveyor's modules that `--help` may load: the command modules, and the little they need to
# register their commands.
HELP_MODULES = {"conveyor", "conveyor.paths", "conveyor.agent", "conveyor.agent.runs"}


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["agent", "--help"]])
def test_version_and_help_import_no_database_library(argv: list[str], tmp_path: Path) -> None:
    modules = imported_by(cli(argv), tmp_path)
    assert "conveyor" in modules
    assert not modules & {*DATABASE_LIBRARIES, "rich", "pydantic"}, sorted(modules)


def test_version_imports_the_standard_library_alone(tmp_path: Path) -> None:
    modules = modules_after(cli(["--version"]), tmp_path)
    assert modules == {"conveyor", "conveyor.cli", "conveyor.cli.main"}


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["history", "--help"], ["agent", "-h"]])
def test_help_imports_typer_and_the_command_modules_alone(argv: list[str], tmp_path: Path) -> None:
    modules = modules_after(cli(argv), tmp_path)
    outside = {m for m in modules if m.split(".")[0] not in ("conveyor", *TYPER)}
    assert outside == set()
    ours = {m for m in modules if m.split(".")[0] == "conveyor"}
    assert {m for m in ours if not m.startswith("conveyor.cli")} <= HELP_MODULES, sorted(ours)


def test_options_are_coerced_without_pydantic(tmp_path: Path) -> None:
    """typer would build a pydantic TypeAdapter per option (cli/coercion.py): a usage error
    found while coercing shows that the options were coerced, and pydantic was not loaded."""
    code = cli(["history", "--env", "dev", "--limit", "many"])
    probe = f"{code}\nprint('pydantic' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Invalid value for '--limit': 'many' is not a valid integer." in out.stderr
    assert out.stdout.strip() == "False"


def test_every_option_of_every_command_is_coerced_without_pydantic() -> None:
    """Each parameter gets the plain coercion (an option of a new kind would bring pydantic back
    to every command that has it: give it a plain type, or extend cli/coercion.py)."""
    from typer.main import get_command

    from conveyor.cli.app import app
    from conveyor.cli.coercion import PlainParam

    root = get_command(app)
    ctx = root.make_context("conveyor", ["--version"], resilient_parsing=True)
    commands = [root]
    params = []
    while commands:
        command = commands.pop()
        params += [(command.name, p) for p in [*command.params, command.get_help_option(ctx)]]
        commands += list(getattr(command, "commands", {}).values())
    assert len(params) > 40
    coerced = {(name, p.name): type(p._runtime_param) for name, p in params}  # type: ignore[union-attr]
    assert {k: v for k, v in coerced.items() if v is not PlainParam} == {}


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("12", int, 12),
        (" 7 ", int, 7),
        (3, int, 3),
        ("2.5", float, 2.5),
        ("dev", str, "dev"),
        ("yes", bool, True),
        ("off", bool, False),
        ("app", Path, Path("app")),
    ],
)
def test_plain_coercion_of_each_type(value: object, kind: type, expected: object) -> None:
    from typer.models import OptionInfo

    from conveyor.cli.coercion import PlainParam

    param = PlainParam(parameter_info=OptionInfo(), annotation=kind)
    assert param._coerce_value(value, param=None, ctx=None) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "kind"), [("1.5", int), ("", int), ("x", float), ("maybe", bool)]
)
def test_plain_coercion_refuses_what_is_not_of_its_type(value: str, kind: type) -> None:
    from typer._click.exceptions import BadParameter
    from typer.models import OptionInfo

    from conveyor.cli.coercion import PlainParam

    param = PlainParam(parameter_info=OptionInfo(), annotation=kind)
    with pytest.raises(BadParameter, match=f"{value!r} is not a valid"):
        param._coerce_value(value, param=None, ctx=None)  # type: ignore[arg-type]


def test_an_environment_named_in_the_file_is_known_without_loading_the_configuration(
    tmp_path: Path,
) -> None:
    from conveyor.cli.common import names_environment

    toml = tmp_path / "conveyor.toml"
    app = '[app]\nname = "shop"\n[services.web]\ncommand = "serve"\n'
    toml.write_text(app)
    assert names_environment(toml, "dev") and not names_environment(toml, "qa")
    toml.write_text(app + "[environments.qa]\n[environments.prod]\n")
    assert names_environment(toml, "qa") and names_environment(toml, "prod")
    assert not names_environment(toml, "dev")  # declared environments replace dev
    # Anything not plain is left to the configuration to say: not named.
    for text in (
        "# nothing yet\n",
        '[app]\nname = "shop"\n',  # no service
        "[services.web]\n",  # no app
        "[app\n",
        "environments = 3\n" + app,
        app + "[environments]\nqa = 1\n",
    ):
        toml.write_text(text)
        assert not names_environment(toml, "qa") and not names_environment(toml, "dev")
    assert not names_environment(tmp_path / "missing.toml", "dev")


def test_the_heads_are_read_from_the_migration_scripts() -> None:
    scripts = Path(__file__).parents[2] / "src/conveyor/store/alembic/versions"
    # The newest script by its number; its revision id may say more ("0008_access").
    newest = max(scripts.glob("0*.py"), key=lambda p: p.name[:4]).read_text()
    revision = re.search(r'^revision: str = "([^"]+)"', newest, re.MULTILINE)
    assert revision is not None and schema_heads() == frozenset({revision.group(1)})


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
        # What migrations after 0002 created goes too: they run again.
        for table in (
            *("check_results", "approvals", "release_tags"),
            *("environment_locks", "audit_log", "conveyor_meta"),
            "schema_changes",
            "release_images",
            *("secret_keyring", "secret_versions", "secret_cache"),
            *("api_tokens", "role_bindings", "idempotency_keys"),
            "deployment_requests",
            "approval_withdrawals",
        ):
            db.execute(f"DROP TABLE {table}")
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
        [(version,)] = db.execute("SELECT version_num FROM conveyor_alembic_version").fetchall()
        assert frozenset({version}) == schema_heads()


def test_alembic_dir_is_where_the_heads_come_from() -> None:
    assert (ALEMBIC_DIR / "versions").is_dir()
