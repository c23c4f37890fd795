"""Warmup slots: bounded, and a replica that served users before goes ahead of new ones."""

from __future__ import annotations

import asyncio

import pytest

from warmgw.slots import Slots


async def test_at_most_n_hold_a_slot_and_priority_zero_goes_first() -> None:
    slots = Slots(2)
    order: list[str] = []
    holding = 0
    most = 0
    gates = {name: asyncio.Event() for name in ("new1", "new2", "new3", "new4", "old")}

    async def warm(name: str, priority: int) -> None:
        nonlocal holding, most
        async with slots.hold(priority):
            order.append(name)
            holding += 1
            most = max(most, holding)
            await gates[name].wait()
            holding -= 1

    tasks = [asyncio.create_task(warm(f"new{i}", 1)) for i in (1, 2, 3, 4)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(warm("old", 0)))  # a re-warm, queued last
    await asyncio.sleep(0)
    assert order == ["new1", "new2"] and slots.waiting == 3
    gates["new1"].set()
    await asyncio.sleep(0.01)
    assert order == ["new1", "new2", "old"]  # ahead of new3 and new4
    for g in gates.values():
        g.set()
    await asyncio.gather(*tasks)
    assert order == ["new1", "new2", "old", "new3", "new4"]
    assert most == 2 and slots.free == 2 and slots.waiting == 0


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = Slots(1)
    release = asyncio.Event()

    async def hold() -> None:
        async with slots.hold():
            await release.wait()

    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await first
    assert slots.free == 1
    async with asyncio.timeout(1):
        async with slots.hold():  # the slot is there to take
            assert slots.free == 0


def test_zero_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        Slots(0)
