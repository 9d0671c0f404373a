"""conveyor.core.migrations with plain values: what is pending, what waits, what a down undoes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conveyor.core.migrations import (
    Migration,
    PlanError,
    Statement,
    contract_due,
    destructive,
    down_plan,
    plan,
    position_line,
    restore_refusal,
)


def mig(version: int, contract: bool = False, down: bool = True) -> Migration:
    return Migration(
        version=version,
        name=f"m{version}",
        path=f"migrations/{version:03d}_m{version}.sql",
        up=(Statement(f"SELECT {version}", 2),),
        down=(Statement("SELECT 0", 4),) if down else None,
        contract=contract,
    )


FILES = [mig(3, contract=True), mig(1), mig(2), mig(4)]


def test_pending_split_into_expand_and_contract_in_version_order() -> None:
    todo = plan(FILES, applied=[1])
    assert [m.version for m in todo.expand] == [2, 4]
    assert [m.version for m in todo.contract] == [3]
    assert [m.version for m in todo.all()] == [2, 3, 4]
    assert plan(FILES, applied=[1, 2, 3, 4]).empty


def test_up_to_a_version_and_late_versions_and_missing_files() -> None:
    assert [m.version for m in plan(FILES, applied=[], to=2).all()] == [1, 2]
    # 2 merged late, below the newest applied: still pending (goose -allow-missing)
    late = plan(FILES, applied=[1, 3, 4, 9])
    assert [m.version for m in late.all()] == [2]
    assert late.missing == (9,)


def test_down_undoes_the_newest_or_everything_above_to() -> None:
    assert [m.version for m in down_plan(FILES, applied=[1, 2, 4])] == [4]
    assert [m.version for m in down_plan(FILES, applied=[1, 2, 4], to=1)] == [4, 2]
    assert [m.version for m in down_plan(FILES, applied=[1, 2, 4], to=0)] == [4, 2, 1]
    assert down_plan(FILES, applied=[]) == []


def test_down_refuses_a_migration_without_down_or_without_file() -> None:
    files = [mig(1), mig(2, down=False)]
    with pytest.raises(PlanError, match=r"002_m2.sql has no Down section"):
        down_plan(files, applied=[1, 2], to=0)
    with pytest.raises(PlanError, match="version 7 is applied but its file is gone"):
        down_plan(files, applied=[1, 7])


NOW = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)


def test_contract_waits_for_the_standby_window() -> None:
    until = NOW + timedelta(minutes=10)
    held = contract_due(NOW, until, old_running=True)
    assert not held.run and held.at == until and "01:10:00" in held.reason
    assert contract_due(until, until, old_running=True).run
    assert contract_due(NOW, until, old_running=False).run
    kept = contract_due(NOW, None, old_running=True)
    assert not kept.run and "conveyor migrate contract" in kept.reason
    assert contract_due(NOW, None, old_running=False).run


def test_error_position_maps_to_the_file_line() -> None:
    st = Statement("CREATE TABLE t (\n  id int,\n  x nosuchtype\n)", 10)
    assert position_line(st, st.sql.index("nosuchtype") + 1) == 12
    assert position_line(st, None) == 10
    assert position_line(st, 1) == 10


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("DROP TABLE users", "drops a table"),
        ("drop materialized view v", "drops a materialized view"),
        ("ALTER TABLE users DROP COLUMN email", "drops a column"),
        ("TRUNCATE users", "truncates a table"),
        ("DELETE FROM users WHERE true", "deletes rows"),
    ],
)
def test_destructive_statements(sql: str, what: str) -> None:
    st = Statement(sql, 1)
    assert destructive([st]) == [(st, what)]


@pytest.mark.parametrize(
    "sql", ["DROP INDEX CONCURRENTLY i", "ALTER TABLE t ADD COLUMN x int", "DROP VIEW v"]
)
def test_not_destructive(sql: str) -> None:
    assert destructive([Statement(sql, 1)]) == []


def test_a_backup_is_restored_only_under_the_release_live_when_it_was_taken() -> None:
    assert restore_refusal("v1", "v1") is None
    assert restore_refusal("v1", None) is None
    assert restore_refusal(None, None) is None
    refused = restore_refusal("v1", "v2")
    assert refused is not None and refused.startswith("v2 is live, but v1 was live")
    assert "nothing was live" in (restore_refusal(None, "v2") or "")
