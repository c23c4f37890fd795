"""The clock of blue-green: moves gradual cutovers on, cuts what a drain deadline leaves in
flight, and keeps the old pool warm during its rollback window."""

from __future__ import annotations

import asyncio
import logging

from warmgw.core.bluegreen import BlueGreen, CutoverParams
from warmgw.core.clock import Clock
from warmgw.core.lifecycle import WARM
from warmgw.core.registry import Registry
from warmgw.core.routing import Router
from warmgw.probe import base_model
from warmgw.warmup import Warmer

log = logging.getLogger("warmgw")

TICK = 0.1  # s


class CutoverDriver:
    def __init__(self, bluegreen: BlueGreen, registry: Registry, router: Router,
                 warmer: Warmer, params: CutoverParams, clock: Clock) -> None:
        self.bluegreen = bluegreen
        self.registry = registry
        self.router = router
        self.warmer = warmer
        self.p = params
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="warmgw-cutover")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        last_keep = self.clock.now()
        while True:
            await asyncio.sleep(TICK)
            for pool in self.bluegreen.tick():
                cut = self.router.cut(pool)
                log.warning("pool %s: drain deadline passed, %d request(s) cut", pool, cut)
            interval = self.p.keep_warm_interval
            if interval > 0 and self.clock.now() - last_keep >= interval:
                last_keep = self.clock.now()
                await self.keep_warm()

    async def keep_warm(self) -> None:
        """Light synthetic traffic to the warm replicas of pools in their rollback window."""
        pools = self.bluegreen.kept_warm()
        if not pools:
            return
        eps = [e for e in self.registry.endpoints.values()
               if e.pool in pools and e.state in WARM and e.models]
        results = await asyncio.gather(
            *(self.warmer.keep_warm(e.url, base_model(e.models, e.adapters), e.max_model_len)
              for e in eps),
            return_exceptions=True,
        )
        for ep, res in zip(eps, results, strict=True):
            if isinstance(res, asyncio.CancelledError):
                raise res
            if isinstance(res, BaseException):
                log.info("replica %s: keep-warm request failed: %s", ep.name, res)
