"""The headers a Connection header names are hop-by-hop: none of them reaches the upstream,
however the tokens are written (no spaces after the commas, several Connection headers, tabs).

Found by the mutation check of proxy/downstream.py (docs/internals.md): splitting the tokens on
whitespace instead of commas forwarded `X-A` here, and no test saw it.
"""

from __future__ import annotations

import pytest
from test_proxy_support import backend, connect, echo_handler, get, proxy_with_route, run, upstreams


@pytest.mark.parametrize(
    "connection",
    [
        "Connection: X-A,X-B\r\n",
        "Connection: x-a\r\nConnection: X-B\r\n",
        "Connection: keep-alive,\tX-A ,X-B,\r\n",
    ],
    ids=["no-spaces", "two-headers", "tabs-and-empty-token"],
)
def test_every_header_named_by_connection_is_dropped(connection: str) -> None:
    async def scenario() -> None:
        async with (
            upstreams(("blue", echo_handler)) as (up,),
            proxy_with_route([backend(up)]) as (_, port),
        ):
            r, w = await connect(port)
            resp = await get(r, w, "/", connection + "X-A: a\r\nX-B: b\r\nX-Kept: yes\r\n")
            w.close()
            assert resp.status == 200
            lines = resp.body.decode().split("\n")[1:]
            names = {ln.partition(": ")[0].lower() for ln in lines}
            assert "x-kept" in names
            assert "x-a" not in names and "x-b" not in names, lines

    run(scenario())
