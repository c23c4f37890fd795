"""Warmup slots: at most n warmups at once, and a replica that has served users before
(an ejected or restarted one: capacity the fleet just lost) goes ahead of new ones.

With a plain semaphore a re-warm queued behind a batch of new replicas (100 joining at
once take their slots for minutes) while the rest of the fleet carried its load."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Slots:
    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"need at least one slot, got {n}")
        self.free = n
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for _, _, f in self._waiting)

    @asynccontextmanager
    async def hold(self, priority: int = 1) -> AsyncIterator[None]:
        """Wait for a slot: a lower priority goes first, then first come first served."""
        if self.free > 0 and not self._waiting:
            self.free -= 1
        else:
            fut = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, next(self._order), fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # handed a slot as it was cancelled
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():  # skip waiters that were cancelled
                fut.set_result(None)
                return
        self.free += 1
