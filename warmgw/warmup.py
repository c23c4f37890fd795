"""The gateway warms a replica itself: rounds of synthetic requests until every request
shape's latency has converged (see core/warm.py for the rule)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from warmgw.core.clock import Clock
from warmgw.core.warm import Convergence, WarmProfile, WarmShape

log = logging.getLogger("warmgw.warmup")

WARMUP_HEADER = "X-Warmgw-Warmup"


class WarmupFailed(Exception):
    pass


@dataclass(frozen=True, slots=True)
class WarmResult:
    converged: bool
    rounds: int
    seconds: float
    requests: int
    latencies: dict[str, float]  # the last round's, per shape
    unsettled: tuple[str, ...]


def prompt_text(tokens: int) -> str:
    """About `tokens` tokens of plain text: one common word per token."""
    return " ".join(["hello"] * tokens)


def request_for(shape: WarmShape, model: str) -> tuple[str, dict[str, Any]]:
    text = prompt_text(shape.prompt_tokens)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": shape.max_tokens,
        "temperature": 0,
        "stream": shape.stream,
    }
    if shape.kind == "chat":
        body["messages"] = [{"role": "user", "content": text}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = text
        path = "/v1/completions"
    return path, body


class Warmer:
    def __init__(self, session: aiohttp.ClientSession, profile: WarmProfile, clock: Clock) -> None:
        self.session = session
        self.p = profile
        self.clock = clock
        self.requests_sent = 0

    async def _one(self, url: str, shape: WarmShape, model: str, sent: list[int]) -> float:
        path, body = request_for(shape, model)
        t0 = self.clock.now()
        self.requests_sent += 1
        sent[0] += 1
        timeout = aiohttp.ClientTimeout(total=self.p.request_timeout)
        async with self.session.post(
            url + path, data=json.dumps(body), timeout=timeout,
            headers={WARMUP_HEADER: "1", "Content-Type": "application/json"},
        ) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                raise WarmupFailed(f"{path} answered {resp.status}: {text}")
            if not shape.stream:
                await resp.read()
                return self.clock.now() - t0
            ttfb = -1.0
            async for _chunk in resp.content.iter_any():
                if ttfb < 0.0:
                    ttfb = self.clock.now() - t0
            return ttfb if ttfb >= 0.0 else self.clock.now() - t0

    async def keep_warm(self, url: str, model: str, max_model_len: int | None) -> float:
        """One small synthetic request, so an idle standby replica does not go cold."""
        shape = self.p.shapes(max_model_len)[0]
        return await self._one(url, WarmShape(shape.kind, False, shape.prompt_tokens,
                                              shape.max_tokens), model, [0])

    async def _measure(self, url: str, shape: WarmShape, model: str, sent: list[int]) -> float:
        if shape.concurrency == 1:
            return await self._one(url, shape, model, sent)
        one = WarmShape(shape.kind, shape.stream, shape.prompt_tokens, shape.max_tokens)
        results = await asyncio.gather(
            *(self._one(url, one, model, sent) for _ in range(shape.concurrency))
        )
        return max(results)

    async def warm(
        self,
        url: str,
        model: str,
        max_model_len: int | None,
        reference: dict[str, float] | None,
        name: str = "",
    ) -> WarmResult:
        """Warm one replica. Raises WarmupFailed (or aiohttp errors) if it misbehaves."""
        shapes = self.p.shapes(max_model_len)
        conv = Convergence(self.p, reference)
        start = self.clock.now()
        sent = [0]  # this replica's requests (several warmups may run at once)
        converged = False
        while len(conv.rounds) < self.p.max_rounds:
            latencies = {}
            for shape in shapes:
                latencies[shape.key] = await self._measure(url, shape, model, sent)
            converged = conv.add_round(latencies)
            log.debug("warmup %s round %d: %s", name, len(conv.rounds), latencies)
            if converged or self.clock.now() - start >= self.p.deadline:
                break
        return WarmResult(
            converged=converged,
            rounds=len(conv.rounds),
            seconds=self.clock.now() - start,
            requests=sent[0],
            latencies=conv.last,
            unsettled=tuple(conv.unsettled()),
        )
