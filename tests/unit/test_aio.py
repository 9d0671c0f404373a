"""cancel_and_wait ends a task even when a cancellation is lost (as wait_for loses one on 3.11)."""

from __future__ import annotations

import asyncio

from conveyor.aio import cancel_and_wait


def test_a_task_that_loses_a_cancellation_still_ends() -> None:
    lost = 0

    async def loop_that_swallows_once() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost == 0:  # what wait_for does on 3.11 when its inner future just finished
                    lost += 1
                    continue
                raise

    async def failing() -> None:
        raise ValueError("a broken check")

    async def scenario() -> list[bool]:
        tasks = [
            asyncio.ensure_future(loop_that_swallows_once()),
            asyncio.ensure_future(failing()),
        ]
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait(tasks), 10)
        return [t.done() for t in tasks]

    assert asyncio.run(scenario()) == [True, True]
    assert lost == 1


def test_nothing_to_cancel_returns_at_once() -> None:
    async def scenario() -> None:
        done = asyncio.ensure_future(asyncio.sleep(0))
        await done
        await cancel_and_wait([done])
        await cancel_and_wait([])

    asyncio.run(scenario())
