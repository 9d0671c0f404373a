"""The event stream when rows commit out of id order (PostgreSQL: two writers, each in its own
transaction), and withdrawals of approvals on the stream (SQLite and PostgreSQL), with the
migration that puts the withdrawals made before it there.

The server is the real application (create_app under uvicorn on 127.0.0.1, as `conveyor serve`
runs it) in this process, so the test can see what its one poller has read; the clients are real
SSE connections; the rows are written by real transactions.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from apikit import Events, Served, token
from sqlalchemy import Connection, create_engine, insert, inspect, select
from test_store import _migrate

from conftest import Project, temp_project, wait_for
from conveyor.api.app import create_app
from conveyor.api.events import Hub
from conveyor.api.state import Settings
from conveyor.runtimes.local import free_port
from conveyor.store.db import Store, normalize_url
from conveyor.store.facts import FactStore
from conveyor.store.models import ApprovalRow, ApprovalWithdrawalRow, EventRow


@contextlib.contextmanager
def in_process(project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Served, Hub]]:
    for key in ("CONVEYOR_HOME", "CONVEYOR_DATABASE_URL", "CONVEYOR_USER"):
        monkeypatch.delenv(key, raising=False)
    if project.database_url is not None:
        monkeypatch.setenv("CONVEYOR_DATABASE_URL", project.database_url)
    app = create_app(Settings(project_dir=project.dir, keepalive=0.3))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), what="the API started")
    assert thread.is_alive(), "the API did not start"
    try:
        yield Served(f"http://127.0.0.1:{port}", None, queue.Queue()), app.state.hub  # type: ignore[arg-type]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the API did not stop"


def add_event(conn: Connection, deployment: int, state: str) -> int:
    """An event inserted in `conn`'s transaction (its id taken now, visible once committed)."""
    return int(
        conn.execute(
            insert(EventRow)
            .values(deployment_id=deployment, at=datetime.now(UTC), state=state, reason="", data={})
            .returning(EventRow.id)
        ).scalar_one()
    )


def add_approval(conn: Connection, actor: str, **withdrawn: Any) -> int:
    """An approval of v1 for dev inserted in `conn`'s transaction (`withdrawn_at`, `_by`)."""
    values = {"version": "v1", "environment": "dev", "decision": "approve", "comment": ""}
    return int(
        conn.execute(
            insert(ApprovalRow)
            .values(app="shop", actor=actor, at=datetime.now(UTC), **values, **withdrawn)
            .returning(ApprovalRow.id)
        ).scalar_one()
    )


def ids(messages: list[dict[str, Any]]) -> list[int]:
    return [int(m["id"]) for m in messages]


@pytest.fixture
def pg_project(fresh_pg_url: str) -> Iterator[Project]:
    with temp_project(fresh_pg_url) as proj:
        proj.configure()
        yield proj


def test_an_event_committed_after_a_later_one_is_sent_once_in_its_place(
    pg_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = pg_project
    assert project.database_url is not None
    _, tok = token(project, "ann", "admin")
    store = Store.open(project.database_url)
    dep = store.create_deployment("shop", "dev", "v1", "deploy", None, datetime.now(UTC))
    engine = create_engine(normalize_url(project.database_url))
    try:
        with in_process(project, monkeypatch) as (served, hub):
            assert hub.streams[0].wait >= 2.0  # PostgreSQL: gaps are waited for
            for cursor in hub.streams:
                cursor.wait = 60.0  # (this test decides when the gap ends; a slow machine won't)
            stream = Events(served, tok)
            assert stream.comments.get(timeout=30) == ": keep-alive"  # connected

            # Writer 1 takes the lower id; writer 2 takes the next and commits first.
            with engine.connect() as one, engine.connect() as two:
                first = one.begin()
                a = add_event(one, dep, "plan")
                with two.begin():
                    b = add_event(two, dep, "succeeded")
                assert b > a
                # The poller has read B, and holds it behind the gap A leaves.
                wait_for(lambda: hub.streams[0].high >= b, what="the poller seeing event B")
                assert hub.streams[0].ranges() == [(a, a)] and hub.last_event < a
                assert stream.messages.empty()  # nothing sent past the gap
                first.commit()
            got = stream.until(lambda m: int(m["id"]) == b)
            assert ids(got) == [a, b]  # A in its place, then B; each once

            # Nothing more about A or B: the next event is the next thing on the stream.
            with engine.begin() as conn:
                c = add_event(conn, dep, "step")
            assert ids(stream.until(lambda m: int(m["id"]) >= c)) == [c]

            # A replay across where the gap was: each once, in order.
            replay = Events(served, tok, last=str(a - 1))
            assert ids(replay.until(lambda m: int(m["id"]) == c)) == [a, b, c]
            replay.close()

            # The same for approvals given by two people at once.
            with engine.connect() as one, engine.connect() as two:
                first = one.begin()
                x = add_approval(one, "amy")
                with two.begin():
                    y = add_approval(two, "bob")
                wait_for(lambda: hub.streams[1].high >= y, what="the poller seeing approval Y")
                assert hub.streams[1].ranges() == [(x, x)] and hub.last_approval < x
                first.commit()
            given = stream.until(lambda m: m["event"] == "approval" and m["data"]["id"] == y)
            assert [(m["data"]["id"], m["data"]["actor"]) for m in given] == [
                (x, "amy"),
                (y, "bob"),
            ]
            assert [m["id"].split(".")[1] for m in given] == [str(x), str(y)]

            # A rolled-back transaction leaves a permanent hole: given up after the wait.
            for cursor in hub.streams:
                cursor.wait = 0.5
            with engine.connect() as one, engine.connect() as two:
                doomed = one.begin()
                hole = add_event(one, dep, "plan")
                with two.begin():
                    d = add_event(two, dep, "succeeded")
                wait_for(lambda: hub.streams[0].high >= d, what="the poller seeing event D")
                doomed.rollback()
            assert ids(stream.until(lambda m: int(m["id"]) == d)) == [d]
            assert hole not in ids(list(stream.messages.queue)) and hub.given_up >= 1
            stream.close()
    finally:
        engine.dispose()
        store.close()


@pytest.mark.both_databases
def test_a_withdrawal_is_on_the_stream_live_and_on_replay(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.configure()
    _, tok = token(project, "ann", "admin")
    store = Store.open(
        project.database_url or f"sqlite:///{project.home / 'state.db'}",
    )
    facts = FactStore(store)
    try:
        with in_process(project, monkeypatch) as (served, hub):
            # SQLite's writers are serialized: nothing is ever waited for there.
            assert (hub.streams[0].wait == 0.0) == (project.database_url is None)
            stream = Events(served, tok)
            assert stream.comments.get(timeout=30) == ": keep-alive"
            given = facts.decide("shop", "v1", "dev", "amy", "approve", datetime.now(UTC), "ok")
            got = stream.until(lambda m: m["event"] == "approval")[-1]
            assert got["data"]["id"] == given.id and got["data"]["change"] == "given"
            assert got["data"]["withdrawn"] is False and got["data"]["withdrawn_by"] is None
            e, a, w = (int(x) for x in got["id"].split("."))
            assert a == given.id

            (ended,) = facts.withdraw("shop", "v1", "dev", "approve", "bob", datetime.now(UTC))
            gone = stream.until(lambda m: m["event"] == "approval")[-1]
            assert gone["data"]["id"] == given.id and gone["data"]["change"] == "withdrawn"
            assert gone["data"]["withdrawn"] is True and gone["data"]["withdrawn_by"] == "bob"
            assert gone["data"]["withdrawn_at"] == ended.withdrawn_at.isoformat()  # type: ignore[union-attr]
            e2, a2, w2 = (int(x) for x in gone["id"].split("."))
            assert (e2, a2) == (e, a) and w2 > w
            stream.close()

            # Resumed from the approval: the withdrawal alone. From before it: both, the
            # approval as it stands now (withdrawn), then its withdrawal.
            after = Events(served, tok, last=got["id"])
            assert [m["id"] for m in after.until(lambda m: m["id"] == gone["id"])] == [gone["id"]]
            after.close()
            before = Events(served, tok, last=f"{e}.{a - 1}.{w}")
            both = before.until(lambda m: m["id"] == gone["id"])
            assert [(m["data"]["change"], m["data"]["withdrawn"]) for m in both] == [
                ("given", True),
                ("withdrawn", True),
            ]
            before.close()
    finally:
        store.close()


def test_the_migration_copies_the_withdrawals_made_before_it(url: str) -> None:
    _migrate(url, "0009_api")
    engine = create_engine(normalize_url(url))
    at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    rows = [  # (actor, withdrawn at, withdrawn by)
        ("amy", at + timedelta(hours=2), "amy"),
        ("bob", None, None),
        ("cid", at + timedelta(hours=1), "ann"),
    ]
    try:
        with engine.begin() as conn:
            for actor, when, by in rows:
                add_approval(conn, actor, withdrawn_at=when, withdrawn_by=by)
        _migrate(url, "head")
        with engine.connect() as conn:
            copied = conn.execute(
                select(ApprovalRow.actor, ApprovalWithdrawalRow.withdrawn_by)
                .join(ApprovalRow, ApprovalRow.id == ApprovalWithdrawalRow.approval_id)
                .order_by(ApprovalWithdrawalRow.id)
            ).all()
        assert [tuple(r) for r in copied] == [("cid", "ann"), ("amy", "amy")]  # oldest first
        _migrate(url, "0009_api", down=True)
        with engine.connect() as conn:
            assert "approval_withdrawals" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()
