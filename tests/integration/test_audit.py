"""The audit log in the database (SQLite and PostgreSQL): tampering found by `check`, concurrent
appenders from real processes never fork the chain, and the log through the real CLI and agent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, text

from conftest import Project
from conveyor.store import audit
from conveyor.store.db import Store, normalize_url

T0 = datetime(2026, 11, 30, 9, 0, 0, 250000, tzinfo=UTC)


def _append(store: Store, n: int) -> None:
    for i in range(n):
        audit.record(
            store,
            at=T0 + timedelta(seconds=i),
            actor="alice",
            action="deploy",
            app="shop",
            environment="dev",
            target=f"v{i}",
            outcome="ok",
            detail=f"v{i} is live",
            data={"deployment": i, "force": False},
        )


def _sql(url: str, *statements: str) -> None:
    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def _ids(store: Store) -> list[int]:
    return [entry.id for entry in audit.entries(store)]


def test_entries_round_trip_and_filter(store: Store) -> None:
    _append(store, 3)
    audit.record(
        store,
        at=T0 + timedelta(hours=1),
        actor="bob",
        action="lock",
        app="other",
        environment="staging",
        target="staging",
        outcome="refused",
    )
    assert audit.check(store) == (4, None)
    first, *_ = audit.entries(store)
    assert first.at == T0 and first.data == {"deployment": 0, "force": False}
    assert [e.target for e in audit.entries(store, app="shop", limit=2)] == ["v1", "v2"]
    assert [e.actor for e in audit.entries(store, actor="bob")] == ["bob"]
    assert [e.app for e in audit.entries(store, environment="staging")] == ["other"]
    assert len(audit.entries(store, since=T0 + timedelta(seconds=1))) == 3


def test_an_edit_is_found(store: Store, url: str) -> None:
    _append(store, 4)
    ids = _ids(store)
    _sql(url, f"UPDATE audit_log SET outcome = 'refused' WHERE id = {ids[1]}")
    count, broken = audit.check(store)
    assert broken is not None and broken.id == ids[1] and "edited" in broken.reason
    assert count == 2


def test_a_deletion_is_found(store: Store, url: str) -> None:
    _append(store, 4)
    ids = _ids(store)
    _sql(url, f"DELETE FROM audit_log WHERE id = {ids[1]}")
    broken = audit.check(store)[1]
    assert broken is not None and broken.id == ids[2] and "deleted" in broken.reason


def test_a_reordering_is_found(store: Store, url: str) -> None:
    _append(store, 4)
    a, b = _ids(store)[1:3]
    # Swap two entries whole (every column but the id): the chain no longer holds at the first.
    columns = "at, actor, action, app, environment, target, outcome, detail, data, prev_hash, hash"
    _sql(
        url,
        "CREATE TABLE swap AS SELECT * FROM audit_log",
        f"UPDATE audit_log SET ({columns}) = (SELECT {columns} FROM swap WHERE swap.id = {b}) "
        f"WHERE id = {a}",
        f"UPDATE audit_log SET ({columns}) = (SELECT {columns} FROM swap WHERE swap.id = {a}) "
        f"WHERE id = {b}",
        "DROP TABLE swap",
    )
    broken = audit.check(store)[1]
    assert broken is not None and broken.id == a


APPENDER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from conveyor.store import audit
    from conveyor.store.db import Store

    store = Store.open(sys.argv[1])
    for i in range(int(sys.argv[3])):
        audit.record(store, at=datetime.now(UTC), actor=sys.argv[2], action="deploy", app="shop",
                     environment="dev", target=f"v{i}", outcome="ok")
    store.close()
    """
)


def test_concurrent_appenders_never_fork_the_chain(store: Store, url: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, url, f"writer{n}", "25"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert audit.check(store) == (100, None)
    prevs = [entry.prev_hash for entry in audit.entries(store)]
    assert len(set(prevs)) == 100  # no two entries chained to the same predecessor


def _entries(project: Project, *args: str) -> list[dict[str, Any]]:
    code, out = project.json("audit", *args)
    assert code == 0, out
    return out["entries"]  # type: ignore[no-any-return]


def test_actions_are_recorded_with_who_and_how_they_ended(project: Project) -> None:
    project.configure(extra="\n[environments.staging]\n")
    project.release("v1")
    project.release("v2", healthy=False)
    project.env["CONVEYOR_USER"] = "alice"
    assert project.deploy("v1")[0] == 0
    assert project.cli("lock", "--env", "dev", "--reason", "maintenance").returncode == 0
    project.env["CONVEYOR_USER"] = "bob"
    assert project.deploy("v2")[0] == 1  # refused: locked
    assert project.cli("unlock", "--env", "dev").returncode == 0
    assert project.json("deploy", "v2", "--env", "dev")[0] == 1  # never healthy: failed
    assert project.cli("promote", "--env", "dev").returncode == 1  # nothing to promote

    rows = [(e["actor"], e["action"], e["target"], e["outcome"]) for e in _entries(project)]
    assert rows == [
        ("alice", "deploy", "v1", "ok"),
        ("alice", "lock", "dev", "ok"),
        ("bob", "deploy", "v2", "refused"),
        ("bob", "unlock", "dev", "ok"),
        ("bob", "deploy", "v2", "failed"),
        ("bob", "promote", "dev", "refused"),
    ]
    refused = _entries(project, "--actor", "bob")[0]
    assert "locked by alice" in refused["detail"] and refused["data"]["lock"]["holder"] == "alice"
    assert [e["action"] for e in _entries(project, "--actor", "alice", "--since", "1h")] == [
        "deploy",
        "lock",
    ]
    assert _entries(project, "--env", "staging") == []
    proc = project.cli("audit", "--env", "dev")
    assert proc.returncode == 0 and "bob  deploy dev v2: refused — dev is locked by alice" in (
        proc.stdout.replace("\n", " ")
    )

    proc = project.cli("audit", "verify")
    assert proc.returncode == 0 and "6 entries, chain intact" in proc.stdout
    third = _entries(project)[2]["id"]
    _sql(
        f"sqlite:///{project.home / 'state.db'}",
        f"UPDATE audit_log SET actor = 'c' WHERE id = {third}",
    )
    proc = project.cli("audit", "verify")
    assert proc.returncode == 1
    assert f"broken at entry #{third}: its content does not match its hash" in proc.stderr
    code, out = project.json("audit", "verify")
    assert code == 1 and out["broken"]["id"] == third


def test_checks_approvals_and_a_freeze_override_are_recorded(project: Project) -> None:
    today = datetime.now(UTC).date()
    window = f"{today - timedelta(days=1)} - {today + timedelta(days=1)}"
    project.configure(
        extra=f'freeze = ["{window}"]\n\n[access]\nadmins = ["alice"]\n\n[checks.tests]\n'
    )
    project.release("v1")
    project.env["CONVEYOR_USER"] = "bob"
    assert project.cli("check", "record", "tests", "--release", "v1", "--passed").returncode == 0
    assert project.cli("approve", "v1", "--env", "dev").returncode == 0
    assert project.cli("reject", "v1", "--env", "dev", "--comment", "no").returncode == 0
    assert project.cli("reject", "v1", "--env", "dev", "--withdraw").returncode == 0
    assert project.deploy("v1")[0] == 1  # frozen
    project.env["CONVEYOR_USER"] = "alice"
    code, out = project.json(
        "deploy", "v1", "--env", "dev", "--override-freeze", "--reason", "hotfix"
    )
    assert code == 0, out
    rows = [(e["actor"], e["action"], e["outcome"]) for e in _entries(project)]
    assert rows == [
        ("bob", "check.record", "ok"),
        ("bob", "approve", "ok"),
        ("bob", "reject", "ok"),
        ("bob", "reject.withdraw", "ok"),
        ("bob", "deploy", "refused"),
        ("alice", "deploy", "ok"),
        ("alice", "freeze.override", "ok"),
    ]
    override = _entries(project)[-1]
    assert override["data"]["reason"] == "hotfix" and override["target"] == "v1"
    assert project.cli("audit", "verify").returncode == 0
