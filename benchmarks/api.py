"""Benchmark: the HTTP API under a large history (issue 14's "Measure").

1. `GET /api/v1/dashboard` with 200 services x 3 environments and 100,000 deployments (300,000
   events) in the state database: p50/p99 over --requests sequential requests to a real
   `conveyor serve` (target p99 < 100 ms).
2. The event stream's fan-out: --clients SSE clients connected to the same server; the benchmark
   appends deployment events through Store.add_event (the engine's own write path) and measures,
   for each event and each client, the time from the write to its arrival (target p99 < 250 ms).

    .venv/bin/python benchmarks/api.py [--requests 1000] [--clients 200] [--database-url URL]

Figures depend on the machine and its load (the client runs on the same cores as the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert

from conveyor.auth.service import AuditContext, create_token
from conveyor.core.access import Role
from conveyor.store.db import Store, database_url
from conveyor.store.models import DeploymentRow, EventRow, InstanceRow, ReleaseRow

ENVS = ("dev", "staging", "production")


def config(services: int) -> str:
    lines = ['[app]\nname = "bench"\n\n[access]\nadmins = ["bench"]\n']
    for n in range(services):
        lines.append(f'[services.s{n:03d}]\nkind = "worker"\ncommand = "true"\n')
    for env in ENVS:
        lines.append(f"[environments.{env}]\n")
    return "\n".join(lines)


def populate(store: Store, services: int, deployments: int) -> None:
    now = datetime.now(UTC)
    with store.writing() as s:
        s.execute(
            insert(ReleaseRow),
            [
                {
                    "app": "bench",
                    "version": f"v{n}",
                    "commit": None,
                    "digest": "sha256:0",
                    "size": 1,
                    "created_at": now - timedelta(hours=1000 - n),
                }
                for n in range(1000)
            ],
        )
    batch = 10_000
    for start in range(0, deployments, batch):
        rows = []
        for i in range(start, min(deployments, start + batch)):
            at = now - timedelta(seconds=deployments - i)
            rows.append(
                {
                    "app": "bench",
                    "environment": ENVS[i % 3],
                    "version": f"v{i % 1000}",
                    "kind": "deploy",
                    "outcome": "succeeded",
                    "started_at": at,
                    "finished_at": at,
                    "reason": "all services live",
                    "previous_version": None,
                }
            )
        with store.writing() as s:
            s.execute(insert(DeploymentRow), rows)
            first = start + 1
            events = [
                {"deployment_id": d, "at": now, "state": state, "reason": state, "data": {}}
                for d in range(first, first + len(rows))
                for state in ("plan", "switched", "succeeded")
            ]
            s.execute(insert(EventRow), events)
    with store.writing() as s:
        s.execute(
            insert(InstanceRow),
            [
                {
                    "app": "bench",
                    "environment": env,
                    "service": f"s{n:03d}",
                    "color": "blue",
                    "version": "v999",
                    "digest": "sha256:0",
                    "role": "active",
                    "runtime": "local",
                    "handle": {},
                    "started_at": now,
                    "standby_until": None,
                    "deployment_id": deployments,
                }
                for env in ENVS
                for n in range(services)
            ],
        )


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def fanout(url: str, tok: str, store: Store, clients: int, events: int) -> list[float]:
    """Each client a bare asyncio connection reading the stream's lines: an HTTP client library
    parsing 200 streams in this one process would measure itself more than the server."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    arrivals: list[float] = []
    ready = asyncio.Event()
    connected = 0
    request = (
        f"GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {tok}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()

    async def listen() -> None:
        nonlocal connected
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the response head
        connected += 1
        if connected == clients:
            ready.set()
        seen = 0
        while seen < events:
            line = await reader.readline()
            at = line.find(b"data: {")
            if at >= 0:
                data = json.loads(line[at + 6 :])
                arrivals.append(time.time() - float(data["data"]["sent"]))
                seen += 1
        writer.close()

    tasks = [asyncio.create_task(listen()) for _ in range(clients)]
    await asyncio.wait_for(ready.wait(), 120)
    await asyncio.sleep(1.0)  # every stream past its first bytes
    for _ in range(events):
        await asyncio.to_thread(
            store.add_event,
            1,
            "step",
            "step 1/2: 30% of traffic",
            {"sent": time.time()},
            datetime.now(UTC),
        )
        await asyncio.sleep(0.2)
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return arrivals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--deployments", type=int, default=100_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cvbench"))
    (root / "conveyor.toml").write_text(config(args.services))
    env = {**os.environ, "CONVEYOR_PROJECT": str(root)}
    if args.database_url:
        env["CONVEYOR_DATABASE_URL"] = args.database_url
    home = root / ".conveyor"
    home.mkdir()
    store = Store.open(args.database_url or database_url(home, root / "conveyor.toml"))
    started = time.perf_counter()
    populate(store, args.services, args.deployments)
    print(f"populated in {time.perf_counter() - started:.1f}s ({store.dialect})")
    _, tok = create_token(
        store,
        "bench",
        Role.admin,
        None,
        timedelta(days=1),
        "bench",
        "bench",
        datetime.now(UTC),
        ["bench"],
        local=True,
        ctx=AuditContext("bench"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "serve", "--port", "0"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().split(" on ", 1)[1].split(" ", 1)[0]
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tok}"}) as client:
            for _ in range(20):  # warm: the configuration parsed, connections pooled
                assert client.get("/api/v1/dashboard").status_code == 200
            times = []
            for _ in range(args.requests):
                t = time.perf_counter()
                r = client.get("/api/v1/dashboard")
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
            rows = len(r.json()["services"])
        print(
            f"GET /api/v1/dashboard ({rows} rows, {args.deployments} deployments): "
            f"p50 {pct(times, 50):.1f} ms, p99 {pct(times, 99):.1f} ms over {args.requests}"
        )
        lag = asyncio.run(fanout(url, tok, store, args.clients, args.events))
        lag_ms = [x * 1000 for x in lag]
        print(
            f"SSE fan-out to {args.clients} clients, {args.events} events: "
            f"p50 {pct(lag_ms, 50):.0f} ms, p99 {pct(lag_ms, 99):.0f} ms, "
            f"max {max(lag_ms):.0f} ms ({len(lag_ms)} arrivals, mean {statistics.mean(lag_ms):.0f})"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        store.close()


if __name__ == "__main__":
    main()
