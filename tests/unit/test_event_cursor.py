"""The event stream's delivery cursor (conveyor.api.cursor): ids that commit out of order are
delivered once each, in id order; a gap is waited for `wait` seconds, then given up. And a
client that resumes from further than the server's cursors gets nothing twice."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.api.cursor import MAX_GAPS, Cursor
from conveyor.api.events import Hub, Message
from conveyor.api.state import Server, Settings
from conveyor.core.access import Binding, Principal, Role


def test_a_late_commit_is_delivered_in_its_place() -> None:
    c = Cursor(delivered=9, wait=2.0)
    step = c.advance([11], now=0.0)  # 10 taken first, committed after 11
    assert (step.deliver, step.cursor, c.ranges()) == ([], 9, [(10, 10)])
    step = c.advance([12], now=0.5)  # still missing: 11 and 12 wait behind it
    assert (step.deliver, step.cursor) == ([], 9)
    step = c.advance([10], now=1.0)
    assert (step.deliver, step.cursor, c.ranges(), step.expired) == ([10, 11, 12], 12, [], [])


def test_a_hole_is_given_up_after_the_wait() -> None:
    c = Cursor(delivered=0, wait=2.0)
    assert c.advance([1, 4, 5], now=0.0).deliver == [1]
    assert c.ranges() == [(2, 3)]
    step = c.advance([3], now=1.0)  # 3 came; 2 (rolled back) never will
    assert (step.deliver, c.ranges()) == ([], [(2, 2)])
    step = c.advance([], now=1.99)
    assert step.deliver == [] and step.cursor == 1
    step = c.advance([], now=2.0)
    assert (step.deliver, step.cursor, step.expired) == ([3, 4, 5], 5, [(2, 2)])
    # Once given up, the id is never delivered, even if it shows up after all.
    assert c.advance([2], now=3.0).deliver == []


def test_without_a_wait_nothing_is_held_back() -> None:
    c = Cursor(delivered=5, wait=0.0)  # SQLite: writers are serialized
    step = c.advance([7, 9], now=0.0)
    assert (step.deliver, step.cursor, step.expired, c.ranges()) == (
        [7, 9],
        9,
        [(6, 6), (8, 8)],
        [],
    )


def test_a_jump_of_the_sequence_is_one_range() -> None:
    c = Cursor(delivered=1, wait=1.0)
    c.advance([1_000_002], now=0.0)
    assert c.ranges() == [(2, 1_000_001)]
    c.advance([500_000], now=0.1)
    assert c.ranges() == [(2, 499_999), (500_001, 1_000_001)]
    assert c.advance([], now=1.0).deliver == [500_000, 1_000_002]


def test_too_many_gaps_give_up_the_oldest() -> None:
    c = Cursor(delivered=0, wait=60.0)
    for n in range(MAX_GAPS + 5):
        c.advance([2 * n + 2], now=n / 1000)  # each leaves one odd id missing
    assert len(c.ranges()) == MAX_GAPS
    assert c.ranges()[0] == (11, 11) and c.delivered == 10


@dataclass(frozen=True)
class Txn:
    taken: float  # when its id was taken (ids are taken in time order)
    commit: float | None  # after how long it commits; None: rolled back


txns = st.lists(
    st.builds(
        Txn,
        st.floats(0, 1, allow_nan=False),
        st.one_of(st.none(), st.floats(0, 3, allow_nan=False)),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(
    txns=txns,
    polls=st.lists(st.floats(0, 40, allow_nan=False), max_size=40),
    wait=st.sampled_from([0.0, 0.5, 2.0]),
    limit=st.integers(1, 8),
)
def test_every_commit_in_time_is_delivered_once_in_order(
    txns: list[Txn], polls: list[float], wait: float, limit: int
) -> None:
    # Ids 1..n taken in time order; each commits (becomes visible) some time later, or never.
    taken, t = [], 0.0
    for x in txns:
        t += x.taken
        taken.append(t)
    visible = {i + 1: taken[i] + x.commit for i, x in enumerate(txns) if x.commit is not None}
    c = Cursor(delivered=0, wait=wait)
    out: list[int] = []

    def poll(now: float) -> None:
        # What the database shows at `now`: ids above `high` (ascending, cut at the limit), and
        # those found in the gaps.
        shown = sorted(i for i, at in visible.items() if at <= now)
        above = [i for i in shown if i > c.high][:limit]
        ranges = c.ranges()
        inside = [i for i in shown if any(lo <= i <= hi for lo, hi in ranges)]
        before = c.delivered
        step = c.advance(above + inside, now)
        assert all(before < i <= step.cursor for i in step.deliver)
        assert all(visible.get(i, now + 1) <= now for i in step.deliver)  # committed ones only
        # No gap is older than the wait after a poll.
        assert all(now - g.since < wait for g in c.gaps)
        out.extend(step.deliver)

    now = 0.0
    for p in sorted(polls):
        now = p
        poll(now)
    # Then polls until the end: everything committed, every gap given up.
    end = max([now, *visible.values(), *taken]) if taken else now
    for k in range(len(txns) // limit + 3):
        poll(end + k * (wait + 1))

    assert out == sorted(set(out))  # in id order, never twice
    for i, x in enumerate(txns, 1):
        if x.commit is not None and x.commit <= wait:
            assert i in out, f"{i} committed {x.commit}s after its id was taken: not delivered"
    assert c.gaps == [] and c.held == []
    assert c.delivered == c.high == max(visible, default=0)


def test_a_client_resuming_ahead_of_the_server_gets_nothing_twice(tmp_path: Path) -> None:
    # It had events up to 5, approvals up to 2, withdrawals up to 1 (from another server, or
    # from this one before a restart): what this server sends of those is not sent to it again.
    (tmp_path / "conveyor.toml").write_text('[app]\nname = "shop"\n')
    srv = Server.open(Settings(project_dir=tmp_path, keepalive=60))
    hub = Hub(srv)
    principal = Principal("vic", (Binding("vic", Role.viewer, None),), None)

    async def run() -> list[str]:
        stream = hub.subscribe(principal, None, "5.2.1")
        assert await stream.__anext__() == "retry: 2000\n\n"  # it is registered
        for table, row in [(0, 4), (0, 5), (1, 2), (2, 1), (0, 6), (1, 3), (2, 2)]:
            hub.fan_out(Message(f"{table}-{row}", "step", "dev", {}, (table, row)))
        got = [await asyncio.wait_for(stream.__anext__(), 10) for _ in range(3)]
        await stream.aclose()
        return [text.split("\n", 1)[0] for text in got]

    try:
        assert asyncio.run(run()) == ["id: 0-6", "id: 1-3", "id: 2-2"]
    finally:
        srv.close()
