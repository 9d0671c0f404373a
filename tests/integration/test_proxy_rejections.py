"""Malformed or ambiguous requests are refused before anything reaches the backend.

Each case is a classic request-smuggling vector or a resource limit: the proxy must answer it
itself (400/414/431 + Connection: close), close the connection, and the upstream must not see a
single byte (nor even a connection).
"""

from __future__ import annotations

import asyncio

import pytest
from test_proxy_support import (
    Request,
    backend,
    connect,
    proxy_with_route,
    raw_exchange,
    read_response,
    reply,
    run,
    upstreams,
)

LIMITS = {"max_request_line": 256, "max_header_size": 1024, "max_headers": 10}

CASES: dict[str, tuple[bytes, int]] = {
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "transfer-encoding and content-length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "differing content-lengths": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "identical duplicate content-lengths": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "content-length list": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
        400,
    ),
    "non-numeric content-length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc",
        400,
    ),
    "signed content-length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        400,
    ),
    "transfer-encoding gzip": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        400,
    ),
    "chunked not final": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    "gzip then chunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "transfer-encoding xchunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two transfer-encoding headers": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "invalid chunk size": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "chunk size overflow": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "obs-fold": (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n",
        400,
    ),
    "obs-fold with tab": (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n\ttwo\r\n\r\n",
        400,
    ),
    "space before colon": (
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 0\r\n\r\n",
        400,
    ),
    "tab before colon": (
        b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
        400,
    ),
    "bare LF line endings": (
        b"GET / HTTP/1.1\nHost: a\n\n",
        400,
    ),
    "missing host (HTTP/1.1)": (
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        400,
    ),
    "two hosts": (
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
    ),
    "CONNECT": (
        b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
        400,
    ),
    "garbage request line": (
        b"HELLO\r\n\r\n",
        400,
    ),
    "over-long request line": (
        b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        414,
    ),
    "over-long headers": (
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(6))
        + b"\r\n",
        431,
    ),
    "one never-ending header": (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 4000,
        431,
    ),
    "too many headers": (
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(12))
        + b"\r\n",
        431,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_without_reaching_upstream(case: str) -> None:
    data, status = CASES[case]

    async def scenario() -> None:
        async with (
            upstreams(("blue", _never_called)) as (up,),
            proxy_with_route([backend(up)], LIMITS) as (_, port),
        ):
            resp, closed = await raw_exchange(port, data)
            assert resp.status == status
            assert resp.header("Connection") == "close"
            assert closed
            assert up.connections == 0
            assert bytes(up.raw) == b""

    run(scenario())


def test_limits_allow_requests_just_within_them() -> None:
    # The control for the limit cases above: the same shapes, just inside the limits, pass.
    async def scenario() -> None:
        async with (
            upstreams(("blue", _ok)) as (up,),
            proxy_with_route([backend(up)], LIMITS) as (_, port),
        ):
            within = (
                b"GET /"
                + b"a" * 200
                + b" HTTP/1.1\r\nHost: a\r\n"
                + b"".join(b"X-H%d: v\r\n" % i for i in range(8))
                + b"Connection: close\r\n\r\n"
            )
            resp, _ = await raw_exchange(port, within)
            assert resp.status == 200
            assert up.connections == 1

    run(scenario())


async def _never_called(req: object, reader: object, writer: object) -> bool:
    raise AssertionError("the upstream must not receive this request")


async def _ok(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    reply(writer, 200, b"ok")


def test_a_refused_client_that_keeps_sending_still_reads_the_answer() -> None:
    # The client is still uploading when the proxy refuses its request. Closing the socket with
    # the upload unread would make the kernel reset the connection, and the reset can destroy
    # the 400 before the client reads it. The proxy half-closes and lingers instead.
    async def scenario() -> None:
        async with (
            upstreams(("blue", _never_called)) as (up,),
            proxy_with_route([backend(up)], LIMITS) as (_, port),
        ):
            for _ in range(5):
                reader, writer = await connect(port)
                head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\n"
                writer.write(head)

                async def upload(writer: asyncio.StreamWriter = writer) -> None:
                    chunk = b"x" * 65536
                    for _ in range(64):  # 4 MiB after the refusal, as a slow client would
                        writer.write(chunk)
                        try:
                            await writer.drain()
                        except ConnectionError:
                            return
                        await asyncio.sleep(0)

                sending = asyncio.ensure_future(upload())
                resp = await read_response(reader)
                assert resp.status == 400
                assert resp.header("Connection") == "close"
                assert await reader.read() == b""  # end of stream, not a reset
                await sending
                writer.close()
            assert up.connections == 0

    run(scenario())
