"""Prefix-cache warmup (`routing.prefix.keep_prefixes`): the hot shared prefixes the gateway
kept (core.keep) are replayed to a replica that has just been warmed, and to the warm
replicas of a pool about to take the traffic (before a cutover), hottest first, within a
count, a time and a share of what the replica's cache holds (counted in the prompt tokens
it reports, when its /metrics gave its cache size; else estimated from the prefixes'
bytes); each one it answered is recorded in the
prefix index as held by it, so the affinity picker sends it its fair part of those prefixes
(its ramp weight and the load bound still cap what it gets) instead of a stampede of misses
or none at all."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from warmgw.core.clock import Clock
from warmgw.core.lifecycle import WARM
from warmgw.core.model import Endpoint
from warmgw.core.routing import Router
from warmgw.core.shapes import DEFAULT_BYTES_PER_TOKEN
from warmgw.warmup import Warmer, WarmupFailed

log = logging.getLogger("warmgw.warmup")


class PrefixWarmup:
    def __init__(self, router: Router, warmer: Warmer, clock: Clock) -> None:
        self.router = router
        self.warmer = warmer
        self.clock = clock
        self.replayed = 0  # kept prefixes replicas answered

    async def warm(self, ep: Endpoint) -> int:
        """Replay the hottest kept prefixes of its models to ep; how many it took."""
        keeper, aff = self.router.keeper, self.router.affinity
        if keeper is None or aff is None or not ep.models:
            return 0
        p = aff.params.prefix
        now = self.clock.now()
        caps: dict[str, int] = {}
        for model in ep.models:
            bpt = self.router.ratios.ratios.get(model, DEFAULT_BYTES_PER_TOKEN)
            caps[model] = aff.capacity(aff.tokens_per_chunk(model, bpt), ep.cache_tokens)
        share = p.warm_cache_share
        chosen = keeper.top(ep.models, p.warm_prefixes, int(min(caps.values()) * share), now)
        budget = ep.cache_tokens * share  # 0: unknown, the estimate above is all there is
        done = used = 0
        deadline = now + p.warm_seconds
        try:
            for k in chosen:
                if self.clock.now() >= deadline or 0 < budget <= used:
                    break
                left = deadline - self.clock.now()
                async with asyncio.timeout(left):
                    tokens = await self.warmer.replay(ep.url, k.model, k.route, k.body)
                if tokens is not None:
                    aff.prefix.record(ep.name, k.chunks, self.clock.now(), caps[k.model])
                    done += 1
                    used += tokens
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, WarmupFailed) as e:
            log.info("replica %s: prefix warmup stopped after %d of %d: %s", ep.name, done,
                     len(chosen), str(e) or type(e).__name__)
        self.replayed += done
        if chosen:
            log.info("replica %s: %d of %d hot prefix(es) replayed", ep.name, done,
                     len(chosen))
        return done

    async def warm_pool(self, pool: str) -> int:
        """Before a cutover to pool: replay the kept prefixes to its warm replicas."""
        eps = [e for e in self.router.registry.endpoints.values()
               if e.pool == pool and e.state in WARM]
        return sum(await asyncio.gather(*(self.warm(e) for e in eps)))
