"""Benchmark: how long a `conveyor` command takes, as a whole process, as a user waits for it.

In a scratch project with the demo app deployed and 10,000 earlier deployments in its database,
this runs each command several times (one process each, what a shell or a CI loop pays) and
prints the median and the spread of the wall times, then where one run's import time goes
(`python -X importtime`, summed per top-level package).

    .venv/bin/python benchmarks/cli.py [--runs 9] [--deployments 10000] [--baseline SRC]

With `--baseline SRC` (the `src` directory of another checkout, e.g. `git worktree add
/tmp/before <commit>`), every command is also run from that source, runs alternating, in the
same project: the "before" and "after" of a change measured under the same load.

Targets (issue 7): `--version` and `--help` within 150 ms; `status --env dev --json` and
`history --env dev --json` within 300 ms; `status` when the agent has to be started within 1.5 s.
Figures depend on the machine and its load: compare runs made one after the other.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table

from conveyor.demo import ScratchProject

# (label, arguments, target in seconds, whether the agent must be stopped before each run)
COMMANDS: list[tuple[str, list[str], float, bool]] = [
    ("--version", ["--version"], 0.150, False),
    ("--help", ["--help"], 0.150, False),
    ("status --env dev --json", ["status", "--env", "dev", "--json"], 0.300, False),
    ("history --env dev --json", ["history", "--env", "dev", "--json"], 0.300, False),
    ("status (agent to be started)", ["status", "--env", "dev"], 1.5, True),
]


def fill_history(demo: ScratchProject, count: int) -> None:
    """Add `count` finished deployments (with two events each) straight into the database."""
    start = datetime.now(UTC) - timedelta(days=365)
    with sqlite3.connect(demo.dir / ".conveyor" / "state.db") as db:
        first = db.execute("SELECT coalesce(max(id), 0) + 1 FROM deployments").fetchone()[0]
        deployments = []
        events = []
        for n in range(count):
            at = start + timedelta(minutes=n)
            stamp = at.strftime("%Y-%m-%d %H:%M:%S.%f")
            done = (at + timedelta(seconds=20)).strftime("%Y-%m-%d %H:%M:%S.%f")
            ident = first + n
            deployments.append(
                (ident, "demo", "dev", f"old{n}", "deploy", "succeeded", stamp, done, "live", None)
            )
            events.append((ident, stamp, "started", "", "{}"))
            events.append((ident, done, "succeeded", "live", "{}"))
        db.executemany(
            "INSERT INTO deployments (id, app, environment, version, kind, outcome, started_at,"
            " finished_at, reason, previous_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            deployments,
        )
        db.executemany(
            "INSERT INTO deployment_events (deployment_id, at, state, reason, data)"
            " VALUES (?, ?, ?, ?, ?)",
            events,
        )


def timed(
    demo: ScratchProject,
    args: list[str],
    before: Callable[[], None] | None,
    src: str | None = None,
) -> float:
    """Wall time of one `conveyor` process; from source tree `src` when given (an agent it
    starts runs that source too)."""
    if before is not None:
        before()
    env = demo.env if src is None else {**demo.env, "PYTHONPATH": src}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        env=env,
        cwd=demo.dir,
        capture_output=True,
        timeout=120,
    )
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"conveyor {' '.join(args)} failed:\n{proc.stderr.decode()}")
    return took


def import_breakdown(demo: ScratchProject, args: list[str], top: int) -> list[tuple[str, float]]:
    """Import time per top-level package (seconds, the modules' own times summed: a package
    that imports another is not charged for it), largest first."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "conveyor", *args],
        env=demo.env,
        cwd=demo.dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    totals: dict[str, float] = defaultdict(float)
    for line in proc.stderr.splitlines():
        # "import time:      self [us] |   cumulative | imported package"
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, _, name = line[len("import time:") :].split("|")
        totals[name.strip().split(".")[0]] += int(own) / 1e6
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=8, help="packages shown per import breakdown")
    parser.add_argument("--baseline", help="src directory of the code to compare with")
    args = parser.parse_args()
    console = Console(highlight=False)
    demo = ScratchProject(console)  # the demo app and its configuration
    try:
        demo.release("v1")
        code, _ = demo.conveyor("deploy", "v1", "--env", "dev", "--json")
        if code != 0:
            raise RuntimeError("the first deploy failed")
        fill_history(demo, args.deployments)
        console.print(
            f"{args.deployments} deployments in the database; {args.runs} runs per command\n"
        )

        def stop_agent() -> None:
            demo.conveyor("agent", "stop", "--keep-running")

        columns = ["command", "median", "min", "max", "target"]
        if args.baseline:
            columns += ["baseline median", "ratio"]
        table = Table(*columns, box=None)
        breakdowns = []
        for label, argv, target, cold in COMMANDS:
            before = stop_agent if cold else None
            timed(demo, argv, before)  # warm the page cache and the agent
            times: list[float] = []
            base: list[float] = []
            for _ in range(args.runs):
                if args.baseline:
                    base.append(timed(demo, argv, before, args.baseline))
                times.append(timed(demo, argv, before))
            median = statistics.median(times)
            mark = "[green]ok[/]" if median <= target else "[red]over[/]"
            row = [
                label,
                f"{median * 1000:.0f} ms",
                f"{min(times) * 1000:.0f} ms",
                f"{max(times) * 1000:.0f} ms",
                f"{target * 1000:.0f} ms {mark}",
            ]
            if base:
                row += [
                    f"{statistics.median(base) * 1000:.0f} ms",
                    f"{median / statistics.median(base):.2f}",
                ]
            table.add_row(*row)
            if before is not None:
                before()
            breakdowns.append((label, import_breakdown(demo, argv, args.top)))
        console.print(table)
        for label, rows in breakdowns:
            parts = ", ".join(f"{name} {secs * 1000:.0f}" for name, secs in rows)
            console.print(f"\nimports of {label} (ms, own time per package): {parts}")
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
