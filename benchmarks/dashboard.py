"""Benchmark: the dashboard's reads and its live stream at scale, on SQLite and PostgreSQL.

For each database (`--db sqlite|postgresql|both`, default both), a scratch project of 200 services
x 3 environments gets 100,000 deployments (and their events, releases, live instances) written in
bulk with SQLAlchemy core into the real schema (made by `Store.open`, i.e. the Alembic
migrations). Then the real server (`conveyor serve`, a subprocess on 127.0.0.1) is measured:

- `GET /api/v1/dashboard` and the overview page `/`: p50/p99 over 1,000 sequential requests
  each (after 20 warm-up requests), with an admin token;
- the SSE fan-out: 200 clients connected to `/api/v1/events`; a canary's traffic steps are
  appended the way the engine's journal appends them (Journal.record on the same database),
  and the time from each write to its arrival at every client is taken (p50/p99 over all
  arrivals of `--events` events).

Targets: p99 < 100 ms for the reads, p99 < 250 ms for the fan-out.

    PYTHONPATH=src .venv/bin/python benchmarks/dashboard.py [--db both] [--requests 1000]
        [--deployments 100000] [--services 200] [--clients 200] [--events 20]

PostgreSQL: a fresh database on 127.0.0.1:5432 (user postgres), dropped afterwards. Everything
listens on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert, text

from conveyor.loadgen import percentile
from conveyor.runtimes.local import free_port
from conveyor.store.db import Store
from conveyor.store.models import DeploymentRow, EventRow, InstanceRow, ReleaseRow

ENVIRONMENTS = ("dev", "staging", "production")
APP = "bench"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
BATCH = 5000


def config_text(services: int) -> str:
    # Workers: no port each, nothing is ever started; the dashboard only reads their names.
    lines = [f'[app]\nname = "{APP}"\n']
    for i in range(services):
        lines.append(f'[services.svc{i:03d}]\nkind = "worker"\ncommand = "true"\n')
    lines.append('[environments.dev]\n[environments.staging]\nafter = "dev"\n')
    lines.append('[environments.production]\nafter = "staging"\napprovals = 1\n')
    return "\n".join(lines)


# --- the data --------------------------------------------------------------------------------


def fill(store: Store, services: int, deployments: int, console: Console) -> None:
    """Releases, `deployments` deployments spread over the environments (2 events each), and one
    active instance per service and environment: bulk inserts, one transaction per batch."""
    started = time.perf_counter()
    t0 = datetime.now(UTC) - timedelta(days=365)
    versions = max(1, deployments // 100)
    with store.writing() as session:
        session.execute(
            insert(ReleaseRow),
            [
                {
                    "app": APP,
                    "version": f"v{i}",
                    "commit": None,
                    "digest": f"sha256:{i:064x}",
                    "size": 1000,
                    "created_at": t0 + timedelta(minutes=i),
                }
                for i in range(versions)
            ],
        )
    outcomes = ("succeeded",) * 8 + ("rolled_back", "failed")
    for start in range(0, deployments, BATCH):
        rows = []
        for i in range(start, min(start + BATCH, deployments)):
            at = t0 + timedelta(seconds=i * 300)
            rows.append(
                {
                    "id": i + 1,
                    "app": APP,
                    "environment": ENVIRONMENTS[i % 3],
                    "version": f"v{i * versions // deployments}",
                    "kind": "deploy",
                    "outcome": outcomes[i % len(outcomes)],
                    "started_at": at,
                    "finished_at": at + timedelta(seconds=40),
                    "reason": "bench",
                    "previous_version": None,
                }
            )
        events = [
            e
            for r in rows
            for e in (
                {
                    "deployment_id": r["id"],
                    "at": r["started_at"],
                    "state": "plan",
                    "reason": "canary: 30%, 100%",
                    "data": {"strategy": "canary", "steps": [{"weight": 30}, {"weight": 100}]},
                },
                {
                    "deployment_id": r["id"],
                    "at": r["finished_at"],
                    "state": r["outcome"],
                    "reason": "bench",
                    "data": {},
                },
            )
        ]
        with store.writing() as session:
            session.execute(insert(DeploymentRow), rows)
            session.execute(insert(EventRow), events)
    if store.dialect == "postgresql":  # explicit ids: move the sequence past them
        with store.writing() as session:
            session.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('deployments', 'id'), "
                    "(SELECT max(id) FROM deployments))"
                )
            )
    last_id = {env: deployments - (deployments - 1 - k) % 3 for k, env in enumerate(ENVIRONMENTS)}
    with store.writing() as session:
        session.execute(
            insert(InstanceRow),
            [
                {
                    "app": APP,
                    "environment": env,
                    "service": f"svc{s:03d}",
                    "color": "blue",
                    "version": f"v{versions - 1}",
                    "digest": "sha256:0",
                    "role": "active",
                    "runtime": "local",
                    "handle": {},
                    "started_at": t0,
                    "standby_until": None,
                    "deployment_id": last_id[env],
                }
                for env in ENVIRONMENTS
                for s in range(services)
            ],
        )
    console.print(
        f"  filled {deployments:,} deployments, {2 * deployments:,} events, "
        f"{services * 3} instances in {time.perf_counter() - started:.1f}s"
    )


@contextlib.contextmanager
def database(kind: str, root: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{root}/.conveyor/state.db"
        return
    import psycopg
    from psycopg import sql

    name = f"conveyor_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# --- the server ------------------------------------------------------------------------------


class Server:
    """`conveyor serve` on a free loopback port, for the scratch project."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "serve.log"

    def conveyor(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor", *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    def admin_token(self) -> str:
        proc = self.conveyor("tokens", "create", "--role", "admin", "--json")
        if proc.returncode != 0:
            raise SystemExit(f"conveyor tokens create failed: {proc.stderr.strip()}")
        return str(json.loads(proc.stdout)["token"])

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "serve", "--port", str(self.port)],
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"conveyor serve exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v1/openapi.json", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise SystemExit(f"conveyor serve did not answer in 60s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


# --- the measurements ------------------------------------------------------------------------


@dataclass
class Row:
    database: str
    what: str
    samples: int
    p50_ms: float
    p99_ms: float
    target_ms: float

    @property
    def ok(self) -> bool:
        return self.p99_ms < self.target_ms


def timed_gets(url: str, headers: dict[str, str], n: int) -> list[float]:
    """`n` sequential GETs on one keep-alive connection (20 warm-up first); milliseconds each."""
    out: list[float] = []
    with httpx.Client(headers=headers, timeout=30) as client:
        for i in range(n + 20):
            started = time.perf_counter()
            resp = client.get(url)
            elapsed = (time.perf_counter() - started) * 1000
            if resp.status_code != 200:
                raise SystemExit(f"GET {url}: {resp.status_code} {resp.text[:300]}")
            if i >= 20:
                out.append(elapsed)
    return out


async def _listen(
    port: int,
    token: str,
    arrivals: dict[str, list[float]],
    connected: list[int],
    ready: asyncio.Event,
    total: int,
) -> None:
    """One dashboard's stream, read with bare asyncio (a light client: the figure is the
    server's, not a client library's parsing): note when each event's marker arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                "GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise SystemExit(f"GET /api/v1/events: {status!r}")
        connected[0] += 1
        if connected[0] == total:
            ready.set()
        while line := await reader.readline():
            at = time.monotonic()
            found = line.find(b"bench-mark-")
            if line.startswith(b"data:") and found >= 0:
                marker = line[found:].split(b'"')[0].split()[0].decode()
                arrivals.setdefault(marker, []).append(at)
    finally:
        writer.close()


async def fan_out(
    server: Server, token: str, store: Store, clients: int, events: int
) -> list[float]:
    """Latencies (ms) from each journal write (taken just before it) to its arrival at each of
    `clients` streams; one event at a time, the next once every client has the last."""
    from conveyor.engine.journal import Journal

    arrivals: dict[str, list[float]] = {}
    written: dict[str, float] = {}
    ready = asyncio.Event()
    connected = [0]
    tasks = [
        asyncio.create_task(_listen(server.port, token, arrivals, connected, ready, clients))
        for _ in range(clients)
    ]
    try:
        await asyncio.wait_for(ready.wait(), 60)
        journal = Journal(store, lambda: datetime.now(UTC))
        dep_id = store.create_deployment(
            APP, "dev", "v-canary", "deploy", None, datetime.now(UTC), reason="bench canary"
        )
        await asyncio.sleep(0.5)  # the opening of the deployment reaches everyone first
        for i in range(events):
            marker = f"bench-mark-{i}"
            weight = 10 + (i * 10) % 90
            written[marker] = time.monotonic()
            # The engine's way: Journal.record appends the step event in its own transaction.
            await asyncio.to_thread(
                journal.record,
                dep_id,
                "step",
                f"step {i + 1}/{events}: {weight}% of traffic {marker}",
                {"weight": weight, "marker": marker},
            )
            deadline = time.monotonic() + 10
            while len(arrivals.get(marker, [])) < clients and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            got = len(arrivals.get(marker, []))
            if got < clients:
                raise SystemExit(f"event {i}: only {got} of {clients} clients got it in 10s")
        journal.finish(dep_id, "succeeded", "bench")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [(at - written[m]) * 1000 for m, ats in arrivals.items() if m in written for at in ats]


def run_one(kind: str, args: argparse.Namespace, console: Console) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-dash-", dir="/tmp"))
    rows: list[Row] = []
    try:
        (root / "conveyor.toml").write_text(config_text(args.services))
        (root / ".conveyor").mkdir()
        with database(kind, root) as url:
            console.print(f"[bold]{kind}[/bold]: {url.split('@')[-1]}")
            env = {**os.environ, "CONVEYOR_PROJECT": str(root), "CONVEYOR_DATABASE_URL": url}
            env.pop("CONVEYOR_HOME", None)
            store = Store.open(url)
            server = Server(root, env)
            try:
                fill(store, args.services, args.deployments, console)
                token = server.admin_token()
                server.start()
                headers = {"Authorization": f"Bearer {token}"}
                for what, path in (("GET /api/v1/dashboard", "/api/v1/dashboard"), ("GET /", "/")):
                    samples = timed_gets(server.url + path, headers, args.requests)
                    rows.append(
                        Row(
                            kind,
                            what,
                            len(samples),
                            percentile(samples, 50),
                            percentile(samples, 99),
                            100.0,
                        )
                    )
                    console.print(f"  {what}: p99 {rows[-1].p99_ms:.1f} ms")
                lat = asyncio.run(fan_out(server, token, store, args.clients, args.events))
                rows.append(
                    Row(
                        kind,
                        f"SSE fan-out to {args.clients} clients",
                        len(lat),
                        percentile(lat, 50),
                        percentile(lat, 99),
                        250.0,
                    )
                )
            finally:
                server.stop()
                store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Measure the dashboard's reads and event fan-out at scale.",
        epilog="Example: PYTHONPATH=src .venv/bin/python benchmarks/dashboard.py --db sqlite",
    )
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--deployments", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=20)
    args = parser.parse_args()
    if min(args.services, args.deployments, args.requests, args.clients, args.events) < 1:
        parser.error("every count must be at least 1")
    console = Console()
    rows: list[Row] = []
    for kind in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
        rows += run_one(kind, args, console)
    table = Table(title="dashboard: p50 / p99 (ms)")
    for col in ("database", "what", "samples", "p50 ms", "p99 ms", "target p99", "met"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.database,
            r.what,
            str(r.samples),
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"< {r.target_ms:.0f}",
            "yes" if r.ok else "NO",
        )
    console.print(table)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
