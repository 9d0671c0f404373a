"""cancel_and_wait ends a task even when a cancellation is lost (as wait_for loses one on 3.11)."""

from __future__ import annotations

import asyncio

from conveyor.aio import cancel_and_wait, wind_down


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


def test_wind_down_ends_what_it_can_and_names_what_ignores_it_within_its_bound() -> None:
    released = False

    async def cooperative() -> None:
        await asyncio.sleep(3600)

    async def stubborn() -> None:
        while True:  # a task that catches every cancellation (until the test lets it go)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if released:
                    raise

    async def scenario() -> tuple[list[str], bool, bool, float]:
        nonlocal released
        loop = asyncio.get_running_loop()
        good = asyncio.create_task(cooperative(), name="good")
        bad = asyncio.create_task(stubborn(), name="bad")
        await asyncio.sleep(0)
        started = loop.time()
        left = await wind_down(0.3)
        took = loop.time() - started
        bad_running = not bad.done()
        released = True  # so that asyncio.run can close its loop
        bad.cancel()
        return [t.get_name() for t in left], good.cancelled(), bad_running, took

    names, good_ended, bad_running, took = asyncio.run(scenario())
    assert names == ["bad"]
    assert good_ended and bad_running
    assert 0.3 <= took < 5.0


def test_wind_down_with_nothing_else_running_returns_at_once() -> None:
    assert asyncio.run(wind_down(10.0)) == []
