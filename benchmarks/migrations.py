"""Benchmark: how long each migration blocks a concurrent writer, unsafe form against the safe
form the lint recommends, on a table of 1,000,000 rows in the local PostgreSQL.

A writer thread (its own connection, autocommit) runs INSERTs and UPDATEs on the table back to
back for the whole run and records each write's latency; for each migration the writes that
overlap it are summed up: the longest, the 99th percentile, and the migration's own duration.

    .venv/bin/python benchmarks/migrations.py [--rows 1000000] [--batch 10000]

PostgreSQL at 127.0.0.1:5432, user postgres, trust authentication: a fresh database is created
and dropped at the end. Measured, not asserted; a few minutes at most.
"""

from __future__ import annotations

import argparse
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from conveyor.loadgen import percentile

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
CUSTOMERS = 10_000


@dataclass
class Writer:
    """INSERT and UPDATE on orders, one after the other, each write's (start, end) kept."""

    dsn: str
    rows: int
    samples: list[tuple[float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            n = 0
            while not self.stop.is_set():
                n += 1
                started = time.perf_counter()
                if n % 2:
                    conn.execute(
                        "INSERT INTO orders (customer_id, total) VALUES (%s, %s)",
                        (n % CUSTOMERS + 1, n % 1000),
                    )
                else:
                    conn.execute(
                        "UPDATE orders SET total = total + 1 WHERE id = %s",
                        ((n * 7919) % self.rows + 1,),
                    )
                self.samples.append((started, time.perf_counter()))

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)

    def during(self, t0: float, t1: float) -> list[float]:
        """Latencies (s) of the writes that overlapped [t0, t1]."""
        return [end - start for start, end in list(self.samples) if start < t1 and end > t0]


@dataclass
class Result:
    change: str
    form: str
    seconds: float
    writes: int
    max_ms: float
    p99_ms: float


Step = str | Callable[[psycopg.Connection], None]


def measure(
    conn: psycopg.Connection, writer: Writer, change: str, form: str, steps: list[Step]
) -> Result:
    time.sleep(0.3)  # the writer's steady state before the change (a benchmark, not a test)
    t0 = time.perf_counter()
    for step in steps:
        if isinstance(step, str):
            conn.execute(step)
        else:
            step(conn)
    t1 = time.perf_counter()
    time.sleep(0.1)  # let writes blocked until t1 finish and be recorded
    latencies = writer.during(t0, t1)
    result = Result(
        change,
        form,
        t1 - t0,
        len(latencies),
        max(latencies, default=0.0) * 1000,
        percentile(latencies, 99) * 1000,
    )
    print(
        f"  {change:32} {form:9} {result.seconds:7.2f}s  writes {result.writes:6}  "
        f"max {result.max_ms:8.1f} ms  p99 {result.p99_ms:7.1f} ms",
        flush=True,
    )
    return result


def backfill(rows: int, batch: int) -> Callable[[psycopg.Connection], None]:
    def run(conn: psycopg.Connection) -> None:
        for low in range(1, rows + 1, batch):
            conn.execute(
                "UPDATE orders SET token = gen_random_uuid() "
                "WHERE id >= %s AND id < %s AND token IS NULL",
                (low, low + batch),
            )
        # Rows the writer inserted meanwhile got the column default already.

    return run


def setup(conn: psycopg.Connection, rows: int) -> None:
    conn.execute(
        "CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)"
    )
    conn.execute(
        "INSERT INTO customers (name) SELECT 'customer ' || i FROM generate_series(1, %s) i",
        (CUSTOMERS,),
    )
    conn.execute(
        "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "customer_id bigint, total numeric(12, 2), created_at timestamptz DEFAULT now())"
    )
    conn.execute(
        "INSERT INTO orders (customer_id, total) "
        "SELECT i %% %s + 1, (i %% 1000) + 0.5 FROM generate_series(1, %s) i",
        (CUSTOMERS, rows),
    )
    conn.execute("VACUUM ANALYZE orders")


def run(dsn: str, rows: int, batch: int) -> list[tuple[Result, Result]]:
    pairs: list[tuple[Result, Result]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        setup(conn, rows)
        print(f"  {rows:,} rows in {time.perf_counter() - started:.1f}s", flush=True)
        writer = Writer(dsn, rows)
        writer.start()
        try:

            def pair(change: str, unsafe: list[Step], safe: list[Step], reset: list[str]) -> None:
                bad = measure(conn, writer, change, "unsafe", unsafe)
                for statement in reset:
                    conn.execute(statement)
                good = measure(conn, writer, change, "safe", safe)
                for statement in reset:
                    conn.execute(statement)
                pairs.append((bad, good))

            pair(
                "CREATE INDEX",
                ["CREATE INDEX orders_total_idx ON orders (total)"],
                ["CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total)"],
                ["DROP INDEX orders_total_idx"],
            )
            fk = "ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers"
            pair(
                "ADD FOREIGN KEY",
                [f"ALTER TABLE orders {fk}"],
                [
                    f"ALTER TABLE orders {fk} NOT VALID",
                    "ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_fk",
                ],
                ["ALTER TABLE orders DROP CONSTRAINT orders_customer_fk"],
            )
            pair(
                "SET NOT NULL",
                ["ALTER TABLE orders ALTER COLUMN total SET NOT NULL"],
                [
                    "ALTER TABLE orders ADD CONSTRAINT orders_total_nn "
                    "CHECK (total IS NOT NULL) NOT VALID",
                    "ALTER TABLE orders VALIDATE CONSTRAINT orders_total_nn",
                    "ALTER TABLE orders ALTER COLUMN total SET NOT NULL",
                    "ALTER TABLE orders DROP CONSTRAINT orders_total_nn",
                ],
                ["ALTER TABLE orders ALTER COLUMN total DROP NOT NULL"],
            )
            pair(
                "ADD COLUMN volatile default",
                ["ALTER TABLE orders ADD COLUMN token uuid NOT NULL DEFAULT gen_random_uuid()"],
                [
                    "ALTER TABLE orders ADD COLUMN token uuid",
                    "ALTER TABLE orders ALTER COLUMN token SET DEFAULT gen_random_uuid()",
                    backfill(rows, batch),
                ],
                ["ALTER TABLE orders DROP COLUMN token", "VACUUM orders"],
            )
        finally:
            writer.close()
    return pairs


def table(pairs: list[tuple[Result, Result]], rows: int, version: str) -> str:
    lines = [
        f"On {rows:,} rows, PostgreSQL {version}, one writer (INSERT/UPDATE back to back):",
        "",
        "| change | unsafe: duration, max / p99 write | safe: duration, max / p99 write "
        "| max write, unsafe/safe |",
        "|---|---|---|---|",
    ]
    for bad, good in pairs:
        ratio = bad.max_ms / good.max_ms if good.max_ms else float("inf")
        lines.append(
            f"| {bad.change} | {bad.seconds:.2f}s, {bad.max_ms:.0f} / {bad.p99_ms:.0f} ms "
            f"| {good.seconds:.2f}s, {good.max_ms:.0f} / {good.p99_ms:.0f} ms | {ratio:.0f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="backfill batch size")
    args = parser.parse_args()
    name = f"conveyor_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        version = str(admin.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            pairs = run(
                f"host=127.0.0.1 port=5432 user=postgres dbname={name}", args.rows, args.batch
            )
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    print()
    print(table(pairs, args.rows, version))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
