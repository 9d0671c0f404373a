"""The migration runner against the real PostgreSQL (127.0.0.1:5432), a fresh database per test:
up, down, status, a failing migration, NO TRANSACTION, the advisory lock between two processes,
delegation, backup and restore, and the state store's record of which deployment did what."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conveyor.config.migrations import MigrationsConfig
from conveyor.migrations import backups, steps
from conveyor.migrations.delegate import CommandFailed
from conveyor.migrations.runner import LockTimeout, MigrationFailed
from conveyor.store.db import Store
from conveyor.store.schema_changes import changes
from integration.migration_files import DROP_NAME, EMAIL, USERS, query, write

pytestmark = pytest.mark.postgres

CFG = MigrationsConfig()
# Two statements; the second fails on line 5: neither may stay.
BROKEN = """\
-- +goose Up
CREATE TABLE audit (id int);

INSERT INTO audit
  VALUES ('not a number');
"""
# A Down section that loses no data.
NOTE = """\
-- +goose Up
CREATE VIEW user_names AS SELECT name FROM users;

-- +goose Down
DROP VIEW user_names;
"""
CONCURRENT = """\
-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX CONCURRENTLY users_name ON users (name);

-- +goose Down
DROP INDEX CONCURRENTLY users_name;
"""


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "release"
    write(root, files)
    return root


def tables(url: str) -> set[str]:
    rows = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {str(r[0]) for r in rows}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path}/state.db")
    yield opened
    opened.close()


def target(store: Store, deployment: int | None = None) -> steps.Target:
    return steps.Target(app="shop", environment="dev", deployment_id=deployment, store=store)


def deployment(store: Store) -> int:
    return store.create_deployment("shop", "dev", "v2", "deploy", "v1", datetime.now(UTC))


def test_up_status_and_down_in_goose_table(fresh_pg_url: str, tmp_path: Path, store: Store) -> None:
    root = tree(tmp_path, {"001_users.sql": USERS, "002_email.sql": EMAIL})
    todo = steps.pending(root, CFG, fresh_pg_url)
    assert [m.version for m in todo.expand] == [1, 2] and todo.contract == ()
    said: list[str] = []
    dep = deployment(store)
    done = steps.apply(todo.expand, fresh_pg_url, target(store, dep), said.append)
    assert [(a.version, a.direction) for a in done] == [(1, "up"), (2, "up")]
    assert "applying 1 users (expand)" in said
    assert query(fresh_pg_url, "SELECT id, name, email FROM users") == [(1, "ada", None)]
    # goose's own layout: version 0 first, then one applied row per version
    assert query(
        fresh_pg_url, "SELECT version_id, is_applied FROM goose_db_version ORDER BY id"
    ) == [(0, True), (1, True), (2, True)]
    assert set(steps.applied(fresh_pg_url)) == {1, 2}
    assert steps.pending(root, CFG, fresh_pg_url).empty
    assert [(c.version, c.deployment_id, c.direction) for c in changes(store, "shop", "dev")] == [
        (1, dep, "up"),
        (2, dep, "up"),
    ]
    assert steps.deployment_versions(store, "shop", "dev", dep) == [1, 2]

    # down: the newest only; its Down drops a column, so it needs force
    with pytest.raises(steps.DownRefused, match=r"002_email\.sql:5: drops"):
        steps.down(root, CFG, fresh_pg_url, target(store), said.append)
    assert set(steps.applied(fresh_pg_url)) == {1, 2}
    undone = steps.down(root, CFG, fresh_pg_url, target(store), said.append, force=True)
    assert [(a.version, a.direction) for a in undone] == [(2, "down")]
    assert set(steps.applied(fresh_pg_url)) == {1}
    assert query(fresh_pg_url, "SELECT * FROM users") == [(1, "ada")]
    steps.down(root, CFG, fresh_pg_url, target(store), said.append, to=0, force=True)
    assert tables(fresh_pg_url) == {"goose_db_version"}
    assert steps.deployment_versions(store, "shop", "dev", dep) == []


def test_a_failing_migration_leaves_nothing_of_itself(
    fresh_pg_url: str, tmp_path: Path, store: Store
) -> None:
    root = tree(tmp_path, {"001_users.sql": USERS, "002_broken.sql": BROKEN})
    todo = steps.pending(root, CFG, fresh_pg_url)
    with pytest.raises(MigrationFailed) as caught:
        steps.apply(todo.expand, fresh_pg_url, target(store), lambda _: None)
    text = str(caught.value)
    assert text.startswith("migrations/002_broken.sql:5: invalid input syntax for type integer")
    assert "nothing of version 2 was applied" in text
    assert caught.value.sqlstate == "22P02"
    assert [a.version for a in caught.value.applied] == [1]
    # the first statement (CREATE TABLE audit) was rolled back with the second
    assert tables(fresh_pg_url) == {"users", "goose_db_version"}
    assert set(steps.applied(fresh_pg_url)) == {1}
    assert [c.version for c in changes(store, "shop", "dev")] == [1]


def test_error_detail_and_hint_are_passed_on(fresh_pg_url: str, tmp_path: Path) -> None:
    dup = "-- +goose Up\nCREATE TABLE t (id int UNIQUE);\nINSERT INTO t VALUES (1), (1);\n"
    root = tree(tmp_path, {"001_dup.sql": dup})
    todo = steps.pending(root, CFG, fresh_pg_url)
    with pytest.raises(MigrationFailed) as caught:
        steps.apply(todo.expand, fresh_pg_url, steps.Target("shop", "dev"), lambda _: None)
    assert "001_dup.sql:3: duplicate key value" in str(caught.value)
    assert "DETAIL: Key (id)=(1) already exists." in str(caught.value)


def test_no_transaction_runs_create_index_concurrently(fresh_pg_url: str, tmp_path: Path) -> None:
    root = tree(tmp_path, {"001_users.sql": USERS, "002_index.sql": CONCURRENT})
    todo = steps.pending(root, CFG, fresh_pg_url)
    steps.apply(todo.expand, fresh_pg_url, steps.Target("shop", "dev"), lambda _: None)
    assert query(fresh_pg_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'users'") == [
        ("users_pkey",),
        ("users_name",),
    ]
    steps.down(root, CFG, fresh_pg_url, steps.Target("shop", "dev"), lambda _: None)
    assert set(steps.applied(fresh_pg_url)) == {1}
    # The same statement in a transaction is refused by PostgreSQL, and named (applied as
    # loaded: the linter, when installed, would refuse it before PostgreSQL sees it)
    tx = CONCURRENT.replace("-- +goose NO TRANSACTION\n", "")
    root = tree(tmp_path, {"002_index.sql": tx})
    [_, index] = steps.load(root, CFG)
    with pytest.raises(
        MigrationFailed, match=r"002_index\.sql:2: CREATE INDEX CONCURRENTLY cannot"
    ):
        steps.apply([index], fresh_pg_url, steps.Target("shop", "dev"), lambda _: None)


def test_contract_migrations_are_planned_apart(fresh_pg_url: str, tmp_path: Path) -> None:
    root = tree(
        tmp_path, {"001_users.sql": USERS, "contract/002_drop.sql": EMAIL, "003_x.sql": DROP_NAME}
    )
    todo = steps.pending(root, CFG, fresh_pg_url)
    assert [m.version for m in todo.expand] == [1]
    assert [m.version for m in todo.contract] == [2, 3]
    steps.apply(todo.expand, fresh_pg_url, steps.Target("shop", "dev"), lambda _: None)
    assert set(steps.applied(fresh_pg_url)) == {1}
    done = steps.apply_contract(root, CFG, fresh_pg_url, steps.Target("shop", "dev"), print)
    assert [(a.version, a.kind) for a in done] == [(2, "contract"), (3, "contract")]
    assert query(fresh_pg_url, "SELECT * FROM users") == [(1, None)]


def test_down_refuses_a_migration_without_down(fresh_pg_url: str, tmp_path: Path) -> None:
    root = tree(tmp_path, {"001_users.sql": USERS, "002_drop.sql": DROP_NAME})
    steps.apply_contract(root, CFG, fresh_pg_url, steps.Target("shop", "dev"), print)
    with pytest.raises(steps.DownRefused, match=r"002_drop.sql has no Down section"):
        steps.down(root, CFG, fresh_pg_url, steps.Target("shop", "dev"), print, force=True)
    assert set(steps.applied(fresh_pg_url)) == {1, 2}


# A process that takes the migration lock, says so, and holds it until its stdin closes.
HOLDER = textwrap.dedent(
    """
    import sys
    from conveyor.migrations import runner
    conn = runner.connect(sys.argv[1], "db", "conveyor test: holder")
    with runner.migration_lock(conn, "db", 10, print):
        print("locked", flush=True)
        sys.stdin.read()
    """
)
# A second migrator: applies the tree's migrations, waiting for the lock up to argv[3] seconds.
MIGRATOR = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from conveyor.config.migrations import MigrationsConfig
    from conveyor.migrations import steps
    from conveyor.migrations.runner import LockTimeout
    url, root, wait = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    todo = steps.pending(root, MigrationsConfig(), url)
    say = lambda line: print(line, flush=True)
    try:
        steps.apply(todo.expand, url, steps.Target("shop", "dev", lock_wait=wait), say)
    except LockTimeout as exc:
        print(exc, flush=True)
        sys.exit(3)
    """
)


@pytest.fixture
def holder(fresh_pg_url: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the migration lock until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, fresh_pg_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_the_advisory_lock_makes_a_second_process_wait(
    fresh_pg_url: str, tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    root = tree(tmp_path, {"001_users.sql": USERS})
    second = subprocess.Popen(
        [sys.executable, "-c", MIGRATOR, fresh_pg_url, str(root), "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert second.stdout is not None and holder.stdin is not None
    first = second.stdout.readline()
    assert first.startswith("waiting for the migration lock on ")
    assert "'conveyor test: holder'" in first
    assert steps.applied(fresh_pg_url) == {}
    holder.stdin.close()
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    assert "applied 1 users" in out
    assert set(steps.applied(fresh_pg_url)) == {1}


def test_the_advisory_lock_wait_is_bounded(
    fresh_pg_url: str, tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    root = tree(tmp_path, {"001_users.sql": USERS})
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-c", MIGRATOR, fresh_pg_url, str(root), "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 3, second.stdout + second.stderr
    assert "gave up after 0.5s waiting for the migration lock" in second.stdout
    assert "held by 'conveyor test: holder'" in second.stdout
    assert time.monotonic() - started < 30
    assert steps.applied(fresh_pg_url) == {}


def test_lock_timeout_in_process(fresh_pg_url: str) -> None:
    from conveyor.migrations import runner

    first = runner.connect(fresh_pg_url, "db")
    second = runner.connect(fresh_pg_url, "db")
    with (
        first,
        second,
        runner.migration_lock(first, "db", 1, print),
        pytest.raises(LockTimeout),
        runner.migration_lock(second, "db", 0.2, print),
    ):
        pass
    # freed: taken again at once
    with runner.connect(fresh_pg_url, "db") as third, runner.migration_lock(third, "db", 1, print):
        pass


def test_delegated_command_gets_the_url_in_its_environment(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    root = tree(tmp_path, {})
    secret_url = fresh_pg_url.replace("postgres@", "postgres:s3cr3tpw@")
    script = root / "migrate.py"
    script.write_text(
        "import os, sys, psycopg\n"
        "url = os.environ['DATABASE_URL']\n"
        "print('using', url)\n"
        "with psycopg.connect(url.replace(':s3cr3tpw', '')) as c:\n"
        "    c.execute('CREATE TABLE delegated (id int)')\n"
        "print('argv', sys.argv[1:])\n"
    )
    cfg = MigrationsConfig(command=f"{sys.executable} migrate.py", command_timeout=60.0)
    assert steps.pending(root, cfg, secret_url).command == cfg.command
    lines: list[str] = []
    result = steps.run_delegated(root, cfg, secret_url, lines.append)
    assert result.exit_code == 0
    assert "delegated" in tables(fresh_pg_url)
    assert "s3cr3tpw" not in result.output and "s3cr3tpw" not in "".join(lines)
    assert "using postgresql://postgres:***@127.0.0.1:5432/" in result.output
    assert "argv []" in result.output

    failing = MigrationsConfig(command="echo boom; exit 4", command_timeout=60.0)
    with pytest.raises(CommandFailed, match=r"exited with code 4\n  \| boom"):
        steps.run_delegated(root, failing, secret_url, lines.append)
    slow = MigrationsConfig(command="sleep 30", command_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(CommandFailed, match=r"did not finish within 0\.3s"):
        steps.run_delegated(root, slow, secret_url, lines.append)
    assert time.monotonic() - started < 20
    with pytest.raises(steps.DownRefused, match="down_command is not set"):
        steps.run_delegated(root, cfg, secret_url, lines.append, "down")


def test_backup_and_restore_round_trip(fresh_pg_url: str, tmp_path: Path, store: Store) -> None:
    root = tree(tmp_path, {"001_users.sql": USERS, "002_email.sql": EMAIL})
    steps.apply(
        steps.pending(root, CFG, fresh_pg_url, to=1).expand,
        fresh_pg_url,
        steps.Target("shop", "dev"),
        lambda _: None,
    )
    home = tmp_path / ".conveyor"
    cfg = MigrationsConfig(backup=True, backup_keep=2)
    said: list[str] = []
    dep = deployment(store)
    taken = steps.take_backup(cfg, fresh_pg_url, home, target(store, dep), said.append)
    assert taken.path.parent == home / "backups" / "dev" and taken.path.suffix == ".dump"
    assert taken.path.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    assert taken.versions == (1,) and taken.deployment_id == dep and taken.live_version is None
    # the deploy goes on: 002 applied, data changed
    steps.apply(
        steps.pending(root, CFG, fresh_pg_url).expand,
        fresh_pg_url,
        steps.Target("shop", "dev"),
        lambda _: None,
    )
    query(fresh_pg_url, "INSERT INTO users VALUES (2, 'bob', 'bob@example.com')")
    listed = backups.listed(home / "backups" / "dev")
    assert [b.name for b in listed] == [taken.name]
    backups.restore(listed[0], fresh_pg_url, said.append)
    assert query(fresh_pg_url, "SELECT * FROM users") == [(1, "ada")]
    assert set(steps.applied(fresh_pg_url)) == {1}
    # retention: the newest backup_keep stay
    for _ in range(3):
        steps.take_backup(cfg, fresh_pg_url, home, target(store), said.append)
    kept = backups.listed(home / "backups" / "dev")
    assert len(kept) == 2 and taken.name not in [b.name for b in kept]
    assert len(list((home / "backups" / "dev").iterdir())) == 4  # .dump + .json each


def test_a_rollback_undoes_only_what_its_deployment_applied(
    fresh_pg_url: str, tmp_path: Path, store: Store
) -> None:
    root = tree(tmp_path, {"001_users.sql": USERS})
    first = deployment(store)
    steps.apply(
        steps.pending(root, CFG, fresh_pg_url).expand, fresh_pg_url, target(store, first), print
    )
    root = tree(tmp_path, {"002_email.sql": EMAIL, "003_note.sql": NOTE})
    second = deployment(store)
    todo = steps.pending(root, CFG, fresh_pg_url)
    steps.apply(todo.expand, fresh_pg_url, target(store, second), print)
    versions = steps.deployment_versions(store, "shop", "dev", second)
    assert versions == [2, 3]
    with pytest.raises(steps.DownRefused, match=r"002_email\.sql:5: drops"):
        steps.down(root, CFG, fresh_pg_url, target(store), print, versions=versions)
    assert set(steps.applied(fresh_pg_url)) == {1, 2, 3}  # nothing undone, not even 003
    undone = steps.down(
        root, CFG, fresh_pg_url, target(store), print, versions=versions, force=True
    )
    assert [a.version for a in undone] == [3, 2]
    assert set(steps.applied(fresh_pg_url)) == {1}
    assert steps.deployment_versions(store, "shop", "dev", second) == []
    assert steps.deployment_versions(store, "shop", "dev", first) == [1]
    history = [(c.version, c.direction, c.deployment_id) for c in changes(store, "shop", "dev")]
    assert history[-2:] == [(3, "down", None), (2, "down", None)]


def test_a_lint_error_refuses_and_an_allowance_is_returned(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    drop = "-- +goose Up\nALTER TABLE users DROP COLUMN name;\n"
    root = tree(tmp_path, {"001_users.sql": USERS, "002_drop.sql": drop})
    with pytest.raises(steps.LintRefused, match=r"002_drop\.sql:2: drop-column-in-expand"):
        steps.pending(root, CFG, fresh_pg_url)
    assert steps.applied(fresh_pg_url) == {}
    allowed = "-- conveyor:allow drop-column-in-expand because v3 never reads it\n" + drop
    root = tree(tmp_path, {"002_drop.sql": allowed})
    todo = steps.pending(root, CFG, fresh_pg_url)
    assert todo.linted
    assert [(a.rule, a.path, a.reason) for a in todo.allowances] == [
        ("drop-column-in-expand", "migrations/002_drop.sql", "v3 never reads it")
    ]
