"""`GET /api/v1/events`: Server-Sent Events of deployments and approvals, live.

ONE poller task per server reads what is new in the state store (`deployment_events` by their
global id, `approvals` by theirs) every `poll_interval` and fans it out to one bounded asyncio
queue per connected client. The engine writes those rows whichever process runs it, so the stream
needs no channel from the agent. A client whose queue is full is too slow: it is dropped (its
stream ends; it reconnects with `Last-Event-ID`), and never holds up the others.

Ids: a deployment event's `id:` is its row id. An approval's is `<last event id>.<approval id>`.
`Last-Event-ID: N` replays the events after N and the approvals given after event N was written;
`N.A` replays the events after N and the approvals after A.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from conveyor.api.state import Server
from conveyor.api.views import event_type
from conveyor.core.access import Principal, decide
from conveyor.store.models import ApprovalRow, DeploymentRow, EventRow

log = logging.getLogger("conveyor.api")
BATCH = 1000  # rows read per poll (or per replay step)


@dataclass
class Message:
    id: str
    event: str
    environment: str | None
    data: dict[str, Any]

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
    _readable: dict[str | None, bool] = field(default_factory=dict)

    def wants(self, msg: Message) -> bool:
        if self.environment is not None and msg.environment != self.environment:
            return False
        env = msg.environment
        if env not in self._readable:
            self._readable[env] = decide(self.principal, "read", env).allowed
        return self._readable[env]


class Hub:
    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.clients: set[Client] = set()
        self.last_event = 0
        self.last_approval = 0
        self.dropped = 0  # clients dropped as too slow, since the start
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.last_event, self.last_approval = await asyncio.to_thread(self._heads)
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _heads(self) -> tuple[int, int]:
        with self.srv.store.reading() as session:
            events = session.scalar(select(func.max(EventRow.id))) or 0
            approvals = session.scalar(select(func.max(ApprovalRow.id))) or 0
        return int(events), int(approvals)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.srv.settings.poll_interval)
            try:
                if not self.clients:  # nobody listens: only the cursors move on
                    heads = await asyncio.to_thread(self._heads)
                    if not self.clients:  # (one that came meanwhile has its replay bound)
                        self.last_event, self.last_approval = heads
                    continue
                batch = await asyncio.to_thread(
                    self.read, self.last_event, self.last_approval, None, None
                )
            except Exception:  # a database hiccup must not end the stream for everyone
                log.exception("reading new events failed")
                continue
            for msg, event_id, approval_id in batch:
                self.last_event = max(self.last_event, event_id)
                self.last_approval = max(self.last_approval, approval_id)
                self.fan_out(msg)

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

    def read(
        self,
        after_event: int,
        after_approval: int,
        upto_event: int | None,
        upto_approval: int | None,
    ) -> list[tuple[Message, int, int]]:
        """New deployment events and approvals of this app after the cursors (up to the upper
        bounds, for a replay), in the order they were written."""
        app = self.srv.app_name()
        out: list[tuple[Message, int, int]] = []
        with self.srv.store.reading() as session:
            query = (
                select(EventRow, DeploymentRow.environment, DeploymentRow.version)
                .join(DeploymentRow, DeploymentRow.id == EventRow.deployment_id)
                .where(EventRow.id > after_event, DeploymentRow.app == app)
            )
            if upto_event is not None:
                query = query.where(EventRow.id <= upto_event)
            for row, env, version in session.execute(query.order_by(EventRow.id).limit(BATCH)):
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
                out.append((Message(str(row.id), kind, env, {**data, "type": kind}), row.id, 0))
            last = out[-1][1] if out else after_event
            approvals = select(ApprovalRow).where(
                ApprovalRow.id > after_approval, ApprovalRow.app == app
            )
            if upto_approval is not None:
                approvals = approvals.where(ApprovalRow.id <= upto_approval)
            for a in session.scalars(approvals.order_by(ApprovalRow.id).limit(BATCH)):
                data = {
                    "id": a.id,
                    "type": "approval",
                    "environment": a.environment,
                    "version": a.version,
                    "decision": a.decision,
                    "actor": a.actor,
                    "comment": a.comment,
                    "withdrawn": a.withdrawn_at is not None,
                    "at": a.at.isoformat(),
                }
                msg = Message(f"{last}.{a.id}", "approval", a.environment, data)
                out.append((msg, 0, a.id))
        return out

    def approval_cursor(self, after_event: int) -> int:
        """The last approval given before event `after_event` was written (for a replay that
        names only an event id)."""
        with self.srv.store.reading() as session:
            at = session.scalar(select(EventRow.at).where(EventRow.id == after_event))
            if at is None:
                return self.last_approval
            found = session.scalar(select(func.max(ApprovalRow.id)).where(ApprovalRow.at <= at))
            return int(found or 0)

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
        upto_event, upto_approval = self.last_event, self.last_approval
        try:
            yield "retry: 2000\n\n"
            if last_event_id:
                after = _cursor(last_event_id)
                if after is not None:
                    event, approval = after
                    if approval is None:
                        approval = await asyncio.to_thread(self.approval_cursor, event)
                    while True:
                        batch = await asyncio.to_thread(
                            self.read, event, approval, upto_event, upto_approval
                        )
                        if not batch:
                            break
                        for msg, event_id, approval_id in batch:
                            event, approval = max(event, event_id), max(approval, approval_id)
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


def _cursor(text: str) -> tuple[int, int | None] | None:
    event, _, approval = text.strip().partition(".")
    try:
        return int(event), int(approval) if approval else None
    except ValueError:
        return None
