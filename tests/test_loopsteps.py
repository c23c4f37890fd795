"""WARMGW_LOOP_STEPS: the longest event-loop step in thread CPU time, not wall time."""

from __future__ import annotations

import asyncio
import time

from warmgw.loopsteps import LoopSteps


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def busy() -> None:
    burn(0.02)  # 20 ms of CPU in one step


def test_the_longest_step_is_the_one_that_used_the_cpu_not_the_one_that_waited() -> None:
    steps = LoopSteps()
    steps.install()
    try:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            loop.call_soon(time.sleep, 0.05)  # 50 ms of wall time, no CPU
            await asyncio.sleep(0.06)
            await asyncio.create_task(busy())

        asyncio.run(main())
    finally:
        steps.uninstall()
    longest, what = steps.take()
    assert 0.015 < longest < 0.045
    assert what.startswith("task busy")
    assert steps.steps >= 3
    assert steps.take() == (0.0, "")  # taken: starts over
    before = steps.steps
    asyncio.run(asyncio.sleep(0))  # uninstalled: no longer counted
    assert steps.steps == before
