"""Ending background tasks for sure.

On Python 3.11, `asyncio.wait_for` swallows a cancellation that arrives just as what it waits
for completes (fixed in 3.12): the task goes on as if nothing happened. A health-check or analysis
loop built on wait_for can then outlive `task.cancel()`, and whoever awaits it waits forever (seen:
a deploy whose result never came, its agent idle in epoll). So the cancellation is repeated until
every task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# How often a cancellation is repeated while a task is still running.
RECANCEL_EVERY = 0.05


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel the tasks and return once each has ended (their outcomes are dropped)."""
    every = list(tasks)
    pending = {t for t in every if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY)
    for task in every:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit


async def wind_down(timeout: float) -> list[asyncio.Task[Any]]:
    """Cancel every other task of the running loop (again and again, as above) for at most
    `timeout` seconds; return those still running then, for the caller to name and abandon."""
    me = asyncio.current_task()
    pending = {t for t in asyncio.all_tasks() if t is not me and not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        wait = min(RECANCEL_EVERY, max(0.0, deadline - loop.time()))
        _, pending = await asyncio.wait(pending, timeout=wait)
    return sorted(pending, key=lambda t: t.get_name())
