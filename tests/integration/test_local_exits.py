"""LocalRuntime.exited against real processes: a death is known when it happens (pidfd).

Children of this runtime, adopted processes (started by another Python process, as by an earlier
agent) and a handle whose pid now names a stranger, which must never be watched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import unavailable
from conveyor.runtimes import Handle, LocalRuntime, Workload
from conveyor.runtimes.local import pidfds_work


def sleeper(tmp_path: Path) -> Workload:
    return Workload(
        app="demo",
        environment="test",
        service="jobs",
        color="blue",
        version="v1",
        artifact=str(tmp_path),
        command="sleep 1000",
        port=None,
        env={"PATH": os.environ["PATH"]},
    )


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LocalRuntime]:
    if not pidfds_work():
        unavailable("this kernel has no pidfds (Linux < 5.3)")
    rt = LocalRuntime(tmp_path / "logs")
    yield rt
    for key in list(rt._children):
        rt.stop_sync(Handle("local", {"pid": key[0], "proc_start": key[1]}, (), 0.0), 0)


async def told(rt: LocalRuntime, h: Handle, kill: int | None) -> list[object]:
    """Two waiters on one process; then (optionally) the signal; both answers."""
    waiters = [asyncio.create_task(rt.exited(h)) for _ in range(2)]
    await asyncio.sleep(0.05)  # both are waiting now (nothing depends on it: they may be late)
    assert not any(w.done() for w in waiters)
    if kill is not None:
        os.kill(int(h.ref["pid"]), kill)
    return list(await asyncio.wait_for(asyncio.gather(*waiters), 10))


def test_a_child_s_death_is_told_to_every_waiter_with_its_moment(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    h = runtime.start_sync(sleeper(tmp_path))
    assert len(runtime._pidfds) == 1  # opened at start
    before = time.time()
    states = asyncio.run(told(runtime, h, signal.SIGKILL))
    for state in states:
        assert state.alive is False and state.detail == "killed by SIGKILL"  # type: ignore[attr-defined]
        assert before <= state.ended_at <= time.time()  # type: ignore[attr-defined]
    # Ended: its pidfd is closed, and a later question is answered at once.
    assert runtime._pidfds == {}
    late = asyncio.run(asyncio.wait_for(runtime.exited(h), 5))
    assert late is not None and (late.alive, late.detail, late.ended_at) == (
        False,
        "killed by SIGKILL",
        None,
    )


def test_an_adopted_process_is_watched_and_a_stranger_never(tmp_path: Path) -> None:
    if not pidfds_work():
        unavailable("this kernel has no pidfds (Linux < 5.3)")
    # Started by another Python process that then exits, as by an agent that went away.
    starter = """
import json, sys
from pathlib import Path
from conveyor.runtimes import LocalRuntime, Workload
w = Workload(**json.loads(sys.argv[1]))
print(json.dumps(LocalRuntime(Path(sys.argv[2])).start_sync(w).to_json()))
"""
    w = sleeper(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", starter, json.dumps(dataclasses.asdict(w)), str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    recorded = Handle.from_json(json.loads(out.stdout))
    runtime = LocalRuntime(tmp_path / "logs")
    try:
        # The pid now names someone else (a later start time): not watched, not waited for.
        stranger = dataclasses.replace(
            recorded, ref={**recorded.ref, "proc_start": int(recorded.ref["proc_start"]) + 1}
        )
        assert asyncio.run(runtime.adopt(stranger)) is None
        state = asyncio.run(asyncio.wait_for(runtime.exited(stranger), 5))
        assert state is not None and (state.alive, state.detail) == (False, "not running")
        assert runtime._pidfds == {}

        adopted = asyncio.run(runtime.adopt(recorded))
        assert adopted is not None and len(runtime._pidfds) == 1  # opened at adoption
        states = asyncio.run(told(runtime, adopted, signal.SIGTERM))
        # Not our child: its exit code went to its parent, but the moment is ours.
        assert all(s.detail == "not running" and s.ended_at for s in states)  # type: ignore[attr-defined]
        assert runtime._pidfds == {}
    finally:
        runtime.stop_sync(recorded, 0)


def test_without_pidfds_exited_says_it_cannot_watch(tmp_path: Path) -> None:
    runtime = LocalRuntime(tmp_path / "logs", pidfds=False)
    h = runtime.start_sync(sleeper(tmp_path))
    try:
        assert asyncio.run(runtime.exited(h)) is None  # the caller polls instead
    finally:
        runtime.stop_sync(h, 0)
    state = asyncio.run(runtime.exited(h))
    assert state is not None and state.detail == "killed by SIGTERM"
