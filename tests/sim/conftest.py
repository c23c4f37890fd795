"""Fixtures for the simulator tests: fast configs, started replicas, HTTP clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from sim_helpers import FAST

from warmgw.sim import SimReplica


@pytest.fixture
async def replica() -> AsyncIterator[SimReplica]:
    r = SimReplica(FAST, name="t0")
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
