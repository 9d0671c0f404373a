"""Environment locks in the database: refusals, leases under an injected clock, takeover, two
real processes racing for one lock, the locks a crashed agent left. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor.engine.errors import Refused
from conveyor.engine.locks import Locked, Locks
from conveyor.store import audit
from conveyor.store import locks as stored
from conveyor.store.db import Store
from conveyor.store.locks import LockRecord

T0 = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _locks(store: Store, clock: Clock) -> Locks:
    return Locks(store, lambda: "shop", clock, lease=30.0)


def _current(store: Store, env: str = "dev") -> LockRecord | None:
    with store.reading() as session:
        return stored.get(session, "shop", env)


def test_a_held_lock_refuses_naming_holder_since_and_why(store: Store) -> None:
    clock = Clock()
    first, second = _locks(store, clock), _locks(store, clock)
    with first.hold("dev", "deploy of v2"):
        clock.advance(25)
        with pytest.raises(Locked) as refused, second.hold("dev", "deploy of v3"):
            pass
        message = str(refused.value)
        assert "already in progress (deploy of v2)" in message
        assert "since 2026-11-30 09:00:00 UTC (25s ago)" in message
        assert f"pid {os.getpid()}" in message
        assert refused.value.details["lock"]["what"] == "deploy of v2"
        # Another environment is not affected; the same agent twice is refused as before.
        with second.hold("staging", "deploy of v3"):
            pass
        with pytest.raises(Refused, match="already in progress"), first.hold("dev", "rollback"):
            pass
    assert _current(store) is None
    with second.hold("dev", "deploy of v3"):
        assert _current(store) is not None


def test_a_lease_renewed_holds_and_an_expired_one_is_taken_over_and_recorded(
    store: Store,
) -> None:
    clock = Clock()
    gone, taker = _locks(store, clock), _locks(store, clock)
    gone.acquire("shop", "dev", "deploy of v2")
    clock.advance(29)
    assert gone.renew("shop", "dev")  # lease now ends at T0 + 59s
    clock.advance(29)
    with pytest.raises(Locked):
        taker.acquire("shop", "dev", "deploy of v3")
    clock.advance(1)  # T0 + 59s: the holder went silent for a whole lease
    taker.acquire("shop", "dev", "deploy of v3")
    current = _current(store)
    assert current is not None and current.owner == taker.owner
    # The old holder finds out at its next renewal, and its release frees nothing of the new one.
    assert not gone.renew("shop", "dev")
    with store.writing() as session:
        assert not stored.release(session, "shop", "dev", gone.owner)
    assert _current(store) == current
    [entry] = audit.entries(store, app="shop")
    assert (entry.action, entry.environment, entry.outcome) == ("lock.takeover", "dev", "ok")
    assert "deploy of v2" in entry.detail and "stopped renewing its lease" in entry.detail


def test_a_manual_lock_has_no_lease_and_refuses_operations(store: Store) -> None:
    clock = Clock()
    with store.writing() as session:
        stored.acquire(
            session,
            LockRecord(
                app="shop",
                environment="dev",
                kind=stored.MANUAL,
                what="db maintenance",
                holder="alice",
                owner="cli",
                host="elsewhere",
                pid=1,
                acquired_at=T0,
                expires_at=None,
            ),
            T0,
        )
    clock.advance(10 * 86400)
    with pytest.raises(Locked, match=r"dev is locked by alice since .*: db maintenance"):
        _locks(store, clock).acquire("shop", "dev", "deploy of v2")


def test_the_locks_of_a_dead_agent_on_this_host_are_freed_at_once(store: Store) -> None:
    clock = Clock()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    crashed = _locks(store, clock)
    crashed.pid = int(dead.stdout)  # as if the process that took it had died since
    crashed.acquire("shop", "dev", "deploy of v2")
    live = _locks(store, clock)
    live.acquire("shop", "staging", "deploy of v2")
    restarted = _locks(store, clock)
    [note] = restarted.free_stale("shop")
    assert "freed the lock of dev (deploy of v2" in note
    assert _current(store) is None and _current(store, "staging") is not None
    [entry] = audit.entries(store, app="shop")
    assert entry.action == "lock.freed" and entry.environment == "dev"


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from conveyor.engine.locks import Locked, Locks
    from conveyor.store.db import Store
    from datetime import UTC, datetime

    url, name, sync = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    store = Store.open(url)
    locks = Locks(store, lambda: "shop", lambda: datetime.now(UTC))
    (sync / f"ready-{name}").touch()
    while not (sync / "go").exists():
        time.sleep(0.01)
    try:
        with locks.hold("dev", f"deploy by {name}"):
            print("won", flush=True)
            while not (sync / "release").exists():
                time.sleep(0.01)
    except Locked as exc:
        print("refused:", exc, flush=True)
    """
)


def _wait(cond: object, what: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_processes_race_for_one_lock_and_exactly_one_wins(
    url: str, store: Store, tmp_path: Path
) -> None:
    sync = tmp_path / "sync"
    sync.mkdir()
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, name, str(sync)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b", "c")
    ]
    try:
        _wait(lambda: len(list(sync.glob("ready-*"))) == 3, "three ready racers")
        (sync / "go").touch()
        # The losers end at once; the winner holds until told to release.
        _wait(lambda: sum(p.poll() is not None for p in racers) == 2, "two refusals")
        current = _current(store)
        assert current is not None
        (sync / "release").touch()
        outputs = [p.communicate(timeout=60) for p in racers]
    finally:
        for p in racers:
            if p.poll() is None:
                p.kill()
    lines = [out.strip() for out, _ in outputs]
    assert sorted(line.split(":")[0] for line in lines) == ["refused", "refused", "won"], outputs
    winner = "abc"[[line == "won" for line in lines].index(True)]
    assert current.what == f"deploy by {winner}"
    for line in lines:
        if line != "won":
            assert f"already in progress (deploy by {winner})" in line
    assert _current(store) is None
