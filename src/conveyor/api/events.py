"""`GET /api/v1/events`: Server-Sent Events of deployments and approvals, live.

ONE poller task per server reads what is new in the state store every `poll_interval` and fans
it out to one bounded asyncio queue per connected client. Three tables are read by id:
`deployment_events`, `approvals` (one given) and `approval_withdrawals` (one withdrawn). The
engine writes those rows whichever process runs it, so the stream needs no channel from the
agent. A client whose queue is full is too slow: it is dropped (its stream ends; it reconnects
with `Last-Event-ID`), and never holds up the others.

Out-of-order commits: on PostgreSQL an id is taken at INSERT and its transaction may commit
after one with a higher id. Each table has a delivery cursor (conveyor.api.cursor.Cursor) that
stays below an id seen missing until it commits or `gap_wait` has passed (a rolled-back
transaction leaves a permanent hole). Holes are found on the ids of every application (one
index-only scan of all three tables per poll); only this application's rows are then read.
Rows are sent in id order per table; on SQLite (serialized writers) nothing is waited for.

Ids: a deployment event's `id:` is its row id. An approval's (given or withdrawn) is
`E.A.W`: the cursors of events, approvals and withdrawals after it. `Last-Event-ID: N` replays
the events after N and the approvals and withdrawals made after event N was written; `N.A` (the
form before withdrawals were on the stream) takes W that way too; `N.A.W` is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, Select, func, literal_column, or_, select, union_all
from sqlalchemy.orm import InstrumentedAttribute, Session

from conveyor.api.cursor import Cursor
from conveyor.api.state import Server
from conveyor.api.views import event_type
from conveyor.core.access import Principal, decide
from conveyor.store.models import ApprovalRow, ApprovalWithdrawalRow, DeploymentRow, EventRow

log = logging.getLogger("conveyor.api")
BATCH = 1000  # rows read per poll (or per replay step)


@dataclass
class Message:
    id: str
    event: str
    environment: str | None
    data: dict[str, Any]
    key: tuple[int, int] = (0, 0)  # (table: 0 events, 1 approvals, 2 withdrawals; row id)

    _text: str = ""

    def encode(self) -> str:
        """The message on the wire (encoded once, whatever the number of clients)."""
        if not self._text:
            self._text = f"id: {self.id}\nevent: {self.event}\ndata: {json.dumps(self.data)}\n\n"
        return self._text


@dataclass(eq=False)
class Client:
    principal: Principal
    environment: str | None
    queue: asyncio.Queue[Message]
    dropped: bool = False
    # Where it resumed from: what it already has, should this server's cursors be behind it (it
    # had it from another server, or from this one before a restart).
    floor: tuple[int, int, int] | None = None
    _readable: dict[str | None, bool] = field(default_factory=dict)

    def wants(self, msg: Message) -> bool:
        if self.environment is not None and msg.environment != self.environment:
            return False
        env = msg.environment
        if env not in self._readable:
            self._readable[env] = decide(self.principal, "read", env).allowed
        return self._readable[env]


GAP_WAIT = 2.0  # seconds an id seen missing is waited for (PostgreSQL), at least 4 polls
Cursors = tuple[int, int, int]  # events, approvals, withdrawals
IDS: tuple[InstrumentedAttribute[int], ...] = (
    EventRow.id,
    ApprovalRow.id,
    ApprovalWithdrawalRow.id,
)
KINDS = ("deployment event", "approval", "withdrawal")


class Hub:
    def __init__(self, srv: Server, gap_wait: float | None = None) -> None:
        self.srv = srv
        self.clients: set[Client] = set()
        # The delivery cursors: every row up to them was sent to the clients (or given up).
        self.last_event = 0
        self.last_approval = 0
        self.last_withdrawal = 0
        self.dropped = 0  # clients dropped as too slow, since the start
        self.given_up = 0  # ids given up after `gap_wait`, since the start
        self.gap_wait = gap_wait
        # The poller's cursors (events, approvals, withdrawals): ahead of the ones above while
        # what they passed is being read and sent.
        self.streams: tuple[Cursor, ...] = ()
        self._task: asyncio.Task[None] | None = None

    @property
    def cursors(self) -> Cursors:
        return self.last_event, self.last_approval, self.last_withdrawal

    def _publish(self, cursors: Cursors) -> None:
        self.last_event, self.last_approval, self.last_withdrawal = cursors

    async def start(self) -> None:
        heads = await asyncio.to_thread(self._heads)
        self._publish(heads)
        wait = self.gap_wait
        if wait is None:
            serialized = self.srv.store.dialect == "sqlite"
            wait = 0.0 if serialized else max(GAP_WAIT, 4 * self.srv.settings.poll_interval)
        self.streams = tuple(Cursor(h, wait) for h in heads)
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _heads(self) -> Cursors:
        with self.srv.store.reading() as session:
            e, a, w = (int(session.scalar(select(func.max(col))) or 0) for col in IDS)
        return e, a, w

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.srv.settings.poll_interval)
            try:
                await self.poll_once()
            except Exception:  # a database hiccup must not end the stream for everyone
                log.exception("reading new events failed")

    async def poll_once(self) -> None:
        """One poll: the ids past the cursors and in their gaps (one statement), then, if
        something became deliverable and someone listens, this application's rows (one more)."""
        wanted = [(c.high, c.ranges()) for c in self.streams]
        seen = await asyncio.to_thread(self.scan, wanted)
        now = time.monotonic()
        for kind, cursor, ids in zip(KINDS, self.streams, seen, strict=True):
            for lo, hi in cursor.advance(ids, now).expired:
                self.given_up += hi - lo + 1
                log.info("gave up waiting for %s id(s) %d..%d (rolled back?)", kind, lo, hi)
        e, a, w = (c.delivered for c in self.streams)
        target = (e, a, w)
        if target == self.cursors:
            return
        if not self.clients:  # nobody listens: only the cursors move on
            self._publish(target)
            return
        # (A client that subscribes while this reads gets the old cursors: its replay ends there
        # and this batch comes to it live, with no gap and no repeat.)
        batch = await asyncio.to_thread(self.read_all, self.cursors, target)
        for msg in batch:
            self.fan_out(msg)
        self._publish(target)

    def scan(self, wanted: list[tuple[int, list[tuple[int, int]]]]) -> list[list[int]]:
        """The ids of every application above each table's highest seen id (the first BATCH)
        and in its gaps, in one statement: primary-key range scans only."""
        parts: list[Select[int, int]] = []
        for k, (col, (high, ranges)) in enumerate(zip(IDS, wanted, strict=True)):
            tag = literal_column(str(k), Integer).label("k")
            above = select(tag, col.label("id")).where(col > high).order_by(col).limit(BATCH)
            sub = above.subquery()
            parts.append(select(sub.c.k, sub.c.id))
            if ranges:
                holes = or_(*(col.between(lo, hi) for lo, hi in ranges))
                parts.append(
                    select(literal_column(str(k), Integer).label("k"), col.label("id")).where(holes)
                )
        out: list[list[int]] = [[] for _ in IDS]
        with self.srv.store.reading() as session:
            for k, i in session.execute(union_all(*parts)):
                out[int(k)].append(int(i))
        return out

    def fan_out(self, msg: Message) -> None:
        for client in list(self.clients):
            if client.dropped or not client.wants(msg):
                continue
            try:
                client.queue.put_nowait(msg)
            except asyncio.QueueFull:
                client.dropped = True  # too slow: its stream ends, the others go on
                self.clients.discard(client)
                self.dropped += 1

    def read_all(self, after: Cursors, upto: Cursors) -> list[Message]:
        """Everything of this app after `after` up to `upto` (the poller's batch)."""
        out: list[Message] = []
        with self.srv.store.reading() as session:
            while any(a < u for a, u in zip(after, upto, strict=True)):
                msgs, after = self._read(session, after, upto)
                out += msgs
        return out

    def read(self, after: Cursors, upto: Cursors) -> tuple[list[Message], Cursors]:
        """A step of a replay: at most BATCH rows of each table of this app after `after` up to
        `upto`; the cursors reached."""
        with self.srv.store.reading() as session:
            return self._read(session, after, upto)

    def _read(
        self, session: Session, after: Cursors, upto: Cursors
    ) -> tuple[list[Message], Cursors]:
        app = self.srv.app_name()
        out: list[Message] = []
        e, a, w = after
        if e < upto[0]:
            query = (
                select(EventRow, DeploymentRow.environment, DeploymentRow.version)
                .join(DeploymentRow, DeploymentRow.id == EventRow.deployment_id)
                .where(EventRow.id > e, EventRow.id <= upto[0], DeploymentRow.app == app)
                .order_by(EventRow.id)
                .limit(BATCH)
            )
            rows = session.execute(query).all()
            for row, env, version in rows:
                data = {
                    "id": row.id,
                    "deployment": row.deployment_id,
                    "environment": env,
                    "version": version,
                    "state": row.state,
                    "reason": row.reason,
                    "service": row.data.get("service"),
                    "data": row.data,
                    "at": row.at.isoformat(),
                }
                kind = event_type(row.state)
                out.append(Message(str(row.id), kind, env, {**data, "type": kind}, (0, row.id)))
            e = rows[-1][0].id if len(rows) == BATCH else upto[0]
        if a < upto[1]:
            approvals = session.scalars(
                select(ApprovalRow)
                .where(ApprovalRow.id > a, ApprovalRow.id <= upto[1], ApprovalRow.app == app)
                .order_by(ApprovalRow.id)
                .limit(BATCH)
            ).all()
            for given in approvals:
                data = _approval(given, "given")
                msg = Message(f"{e}.{given.id}.{w}", "approval", given.environment, data)
                msg.key = (1, given.id)
                out.append(msg)
            a = approvals[-1].id if len(approvals) == BATCH else upto[1]
        if w < upto[2]:
            withdrawals = session.execute(
                select(ApprovalWithdrawalRow, ApprovalRow)
                .join(ApprovalRow, ApprovalRow.id == ApprovalWithdrawalRow.approval_id)
                .where(
                    ApprovalWithdrawalRow.id > w,
                    ApprovalWithdrawalRow.id <= upto[2],
                    ApprovalWithdrawalRow.app == app,
                )
                .order_by(ApprovalWithdrawalRow.id)
                .limit(BATCH)
            ).all()
            for wd, ended in withdrawals:
                data = {
                    **_approval(ended, "withdrawn"),
                    "withdrawn": True,
                    "withdrawn_by": wd.withdrawn_by,
                    "withdrawn_at": wd.withdrawn_at.isoformat(),
                }
                msg = Message(f"{e}.{a}.{wd.id}", "approval", ended.environment, data)
                msg.key = (2, wd.id)
                out.append(msg)
            w = withdrawals[-1][0].id if len(withdrawals) == BATCH else upto[2]
        return out, (e, a, w)

    def resume_cursors(self, after_event: int) -> tuple[int, int]:
        """The last approval given and the last withdrawal made before event `after_event` was
        written (for a replay that names only an event id)."""
        with self.srv.store.reading() as session:
            at = session.scalar(select(EventRow.at).where(EventRow.id == after_event))
            if at is None:
                return self.last_approval, self.last_withdrawal
            approval = session.scalar(select(func.max(ApprovalRow.id)).where(ApprovalRow.at <= at))
            withdrawal = session.scalar(
                select(func.max(ApprovalWithdrawalRow.id)).where(
                    ApprovalWithdrawalRow.withdrawn_at <= at
                )
            )
            return int(approval or 0), int(withdrawal or 0)

    async def subscribe(
        self,
        principal: Principal,
        environment: str | None,
        last_event_id: str | None,
        recheck: Callable[[], Principal | None] | None = None,
    ) -> AsyncIterator[str]:
        """The stream of one client: the replay after `last_event_id`, then live events, with a
        keep-alive comment whenever nothing was sent for `keepalive` seconds. At each keep-alive
        `recheck` authenticates the client again: None (the token expired or was revoked) ends
        the stream; a principal whose bindings changed sees what they may read now."""
        client = Client(principal, environment, asyncio.Queue(self.srv.settings.client_queue))
        # Registered and the cursors read in one step of the loop: what the poller sends from
        # now on comes after what the replay reads, with no gap and no repeat.
        self.clients.add(client)
        upto = self.cursors
        try:
            yield "retry: 2000\n\n"
            if last_event_id:
                after = _cursor(last_event_id)
                if after is not None:
                    event, approval, withdrawal = after
                    if approval is None or withdrawal is None:
                        found = await asyncio.to_thread(self.resume_cursors, event)
                        approval = found[0] if approval is None else approval
                        withdrawal = found[1] if withdrawal is None else withdrawal
                    cur: Cursors = (event, approval, withdrawal)
                    client.floor = cur
                    while any(c < u for c, u in zip(cur, upto, strict=True)):
                        batch, cur = await asyncio.to_thread(self.read, cur, upto)
                        for msg in batch:
                            if client.wants(msg):
                                yield msg.encode()
            keepalive = self.srv.settings.keepalive
            loop = asyncio.get_running_loop()
            checked = loop.time()
            while True:
                if client.dropped:
                    return  # dropped as too slow: end the stream (the client reconnects)
                got: Message | None
                try:
                    got = await asyncio.wait_for(client.queue.get(), keepalive)
                except TimeoutError:
                    got = None
                if got is not None and client.floor is not None:
                    table, row = got.key
                    if row <= client.floor[table]:
                        continue  # it has that one already
                if recheck is not None and loop.time() - checked >= keepalive:
                    checked = loop.time()
                    now = await asyncio.to_thread(recheck)
                    if now is None:
                        return  # the token expired or was revoked: the stream ends
                    client.principal, client._readable = now, {}
                    if got is not None and not client.wants(got):
                        continue  # no longer readable by them
                yield got.encode() if got is not None else ": keep-alive\n\n"
        finally:
            self.clients.discard(client)


def _approval(row: ApprovalRow, change: str) -> dict[str, Any]:
    """An approval on the stream, as it stands when read (`change`: given or withdrawn)."""
    return {
        "id": row.id,
        "type": "approval",
        "change": change,
        "environment": row.environment,
        "version": row.version,
        "decision": row.decision,
        "actor": row.actor,
        "comment": row.comment,
        "withdrawn": row.withdrawn_at is not None,
        "withdrawn_by": row.withdrawn_by,
        "withdrawn_at": row.withdrawn_at.isoformat() if row.withdrawn_at else None,
        "at": row.at.isoformat(),
    }


def _cursor(text: str) -> tuple[int, int | None, int | None] | None:
    """`N`, `N.A` or `N.A.W` (None: not an id of this stream, nothing is replayed)."""
    parts = text.strip().split(".")
    if len(parts) > 3:
        return None
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        return None
    rest: list[int | None] = [*ids[1:], None, None]
    return ids[0], rest[0], rest[1]
