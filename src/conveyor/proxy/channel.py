"""A message channel between two proxy processes over a unix stream socket, with file descriptors.

Used between the keeper and each of its workers (a socketpair) and between an old keeper and the
new one during a reload. A message is a 4-byte big-endian length and a JSON object; listening
sockets travel beside it as SCM_RIGHTS (`socket.send_fds`). On a stream socket the kernel hands
received descriptors over with the bytes they were sent with, so the receiver queues every
descriptor in arrival order and a message saying `"nfds": k` takes the next k from the queue:
its bytes are all in before it is parsed, and so are its descriptors.

Requests carry an `"id"`; the answer carries the same id. Either side may ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

_HEADER = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024
MAX_FDS = 253  # SCM_MAX_FD

Handler = Callable[[dict[str, Any], list[socket.socket]], Awaitable[dict[str, Any]]]


class ChannelClosed(ConnectionError):
    pass


def _frame(msg: dict[str, Any]) -> bytes:
    payload = json.dumps(msg).encode()
    return _HEADER.pack(len(payload)) + payload


class Channel:
    """One end of a channel, driven by the running event loop (add_reader, sock_sendall)."""

    def __init__(
        self,
        sock: socket.socket,
        handler: Handler | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.on_close = on_close
        self.closed = False
        self._buf = bytearray()
        self._fds: deque[int] = deque()
        self._next = 0
        self._waiting: dict[int, asyncio.Future[tuple[dict[str, Any], list[socket.socket]]]] = {}
        self._out = bytearray()  # framed bytes the socket could not take yet
        self._flush_waiters: list[asyncio.Future[None]] = []
        # Answers a message at once, in the read callback, when it can (None: it cannot); the
        # worker's route switch then costs no extra turn of a busy event loop.
        self.sync_handler: Callable[[dict[str, Any], list[socket.socket]], dict[str, Any] | None]
        self.sync_handler = lambda msg, socks: None
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 18, MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        self._fds.extend(fds)
        if not data:
            self.close()
            return
        self._buf += data
        while len(self._buf) >= 4:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_MESSAGE:
                self.close()
                return
            if len(self._buf) < 4 + size:
                break
            msg = json.loads(bytes(self._buf[4 : 4 + size]))
            del self._buf[: 4 + size]
            socks = [self._take_fd() for _ in range(int(msg.pop("nfds", 0)))]
            self._dispatch(msg, socks)

    def _take_fd(self) -> socket.socket:
        return socket.socket(fileno=self._fds.popleft())

    def _dispatch(self, msg: dict[str, Any], socks: list[socket.socket]) -> None:
        if "answer" in msg:
            fut = self._waiting.pop(int(msg["answer"]), None)
            if fut is not None and not fut.done():
                fut.set_result((msg, socks))
            return
        if self.handler is None:
            return
        try:
            reply = self.sync_handler(msg, socks)
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if reply is not None:
            reply["answer"] = msg.get("id", -1)
            with contextlib.suppress(ChannelClosed):
                self.write(_frame(reply))
            return
        task = self.loop.create_task(self._answer(msg, socks))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: dict[str, Any], socks: list[socket.socket]) -> None:
        assert self.handler is not None
        try:
            reply = await self.handler(msg, socks)
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply["answer"] = msg.get("id", -1)
        with contextlib.suppress(ChannelClosed, OSError):
            await self.send(reply)

    async def send(self, msg: dict[str, Any], socks: Sequence[socket.socket] = ()) -> None:
        """Send a message (and descriptors). Without descriptors it is written at once, or
        queued behind what the socket could not take yet: messages never interleave."""
        if socks:
            msg = {**msg, "nfds": len(socks)}
        data = _frame(msg)
        if socks:
            fds = [s.fileno() for s in socks]
            while True:
                # The descriptors go with the first bytes: only once nothing is queued before.
                await self._flushed()
                if self.closed:
                    raise ChannelClosed("channel closed")
                try:
                    sent = socket.send_fds(self.sock, [data], fds)
                    break
                except (BlockingIOError, InterruptedError):
                    await asyncio.sleep(0.001)
                except OSError as exc:
                    self.close()
                    raise ChannelClosed(str(exc)) from exc
            data = data[sent:]
            if not data:
                return
        self.write(data)

    @property
    def unparsed(self) -> bytes:
        """Bytes received that formed no message (e.g. a JSON line from a proxy that does not
        speak this protocol)."""
        return bytes(self._buf)

    def write(self, data: bytes) -> None:
        """Write a framed message now, or queue it behind earlier bytes (add_writer)."""
        if self.closed:
            raise ChannelClosed("channel closed")
        if not self._out:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self.close()
                raise ChannelClosed(str(exc)) from exc
            if n == len(data):
                return
            data = data[n:]
            self.loop.add_writer(self.sock.fileno(), self._writable)
        self._out += data

    def _writable(self) -> None:
        try:
            n = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self._out[:n]
        if not self._out:
            self.loop.remove_writer(self.sock.fileno())
            self._wake_flushed()

    async def _flushed(self) -> None:
        while self._out and not self.closed:
            fut: asyncio.Future[None] = self.loop.create_future()
            self._flush_waiters.append(fut)
            await fut

    def _wake_flushed(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def request(
        self,
        msg: dict[str, Any],
        socks: Sequence[socket.socket] = (),
        timeout: float = 10.0,
    ) -> tuple[dict[str, Any], list[socket.socket]]:
        """Send `msg` and wait for its answer (and the descriptors that came with it)."""
        self._next += 1
        ident = self._next
        fut: asyncio.Future[tuple[dict[str, Any], list[socket.socket]]] = self.loop.create_future()
        self._waiting[ident] = fut
        try:
            await self.send({**msg, "id": ident}, socks)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(ident, None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        if self._out:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_writer(self.sock.fileno())
            self._out.clear()
        self._wake_flushed()
        with contextlib.suppress(OSError):
            self.sock.close()
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popleft())
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ChannelClosed("channel closed"))
        self._waiting.clear()
        if self.on_close is not None:
            self.on_close()
