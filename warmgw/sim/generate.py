"""Serving one inference request on a simulated replica: queue, sleep, respond or stream."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

from aiohttp import web

from warmgw.sim import api, bodies
from warmgw.sim.api import GenRequest, Kind
from warmgw.sim.engine import RequestRecord, SimProcess, SimStats
from warmgw.sim.faults import Faults
from warmgw.sim.model import SimConfig, Timing
from warmgw.sim.tokens import generated_token

# As real vLLM 0.32: no Cache-Control header on SSE responses.
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}


class ReplicaContext(Protocol):
    """What a request needs from its replica (faults are re-read so changes apply live)."""

    config: SimConfig
    stats: SimStats

    @property
    def faults(self) -> Faults: ...

    def next_hex_id(self) -> str: ...

    def now_wall(self) -> float: ...

    def now(self) -> float: ...

    def held_elsewhere(self, token_ids: Sequence[int]) -> int: ...


class Generation:
    """One request's life; its outcome fields feed the RequestRecord."""

    def __init__(
        self,
        request: web.Request,
        kind: Kind,
        warmup: bool,
        ctx: ReplicaContext,
        process: SimProcess,
        start: float,
    ) -> None:
        self.request = request
        self.kind = kind
        self.warmup = warmup
        self.ctx = ctx
        self.process = process
        self.start = start
        self.prompt_tokens = 0
        self.model = ""
        self.features: tuple[str, ...] = ()
        self.paid_cold = False
        self.cold: tuple[str, ...] = ()
        self.request_id = request.headers.get("X-Request-Id", "")
        self.cached_tokens = -1
        self.fleet_cached_tokens = -1
        self.ttft: float | None = None
        self.generated = 0
        self.status = 0
        self.outcome = "disconnected"  # until proven otherwise
        self._loop = asyncio.get_running_loop()

    def record(self, now: float) -> RequestRecord:
        return RequestRecord(
            start=self.start,
            path=self.request.path,
            warmup=self.warmup,
            paid_cold=self.paid_cold,
            prompt_tokens=self.prompt_tokens,
            ttft=self.ttft,
            duration=now - self.start,
            status=self.status,
            outcome=self.outcome,
            model=self.model,
            features=self.features,
            cold=self.cold,
            request_id=self.request_id,
            cached_tokens=self.cached_tokens,
            fleet_cached_tokens=self.fleet_cached_tokens,
        )

    def _elapsed(self) -> float:
        return self.ctx.now() - self.start

    async def run(self) -> web.StreamResponse:
        """Raises ApiError for a request vLLM would reject."""
        req = api.parse_request(self.kind, await self.request.read(), self.ctx.config)
        self.prompt_tokens = req.prompt_tokens
        self.model = req.model
        self.features = req.features.tags()
        x_request_id = self.request.headers.get("X-Request-Id")
        rid = api.response_id(self.kind, x_request_id, self.ctx.next_hex_id())
        created = int(self.ctx.now_wall())
        stream: web.StreamResponse | None = None
        if req.stream:  # vLLM sends the headers at once, the first event after prefill
            stream = web.StreamResponse(status=200, headers=SSE_HEADERS)
            await stream.prepare(self.request)
            self.status = 200
        kv_tokens = req.prompt_tokens + req.max_tokens * req.features.n
        slot, running = await self.process.admit(kv_tokens, req.features.adapter)
        metrics = self.process.metrics
        try:
            cached = 0
            if self.ctx.config.prefix_cache_blocks:
                self.fleet_cached_tokens = self.ctx.held_elsewhere(req.token_ids)
                cached = self.process.prefix.serve(req.token_ids)
                metrics.prefix_queries.inc(req.prompt_tokens)
                metrics.prefix_hits.inc(cached)
                req = dataclasses.replace(req, cached_tokens=cached)
                self.cached_tokens = cached
            timing = self.process.latency.plan(
                req.prompt_tokens, req.max_tokens, running, req.features, cached
            )
            self._count_cold(timing)
            await asyncio.sleep(timing.ttft)
            self.ttft = self._elapsed()
            metrics.ttft.observe(self.ttft)
            metrics.prompt_tokens.inc(req.prompt_tokens)
            if stream is not None:
                await self._stream(stream, req, rid, created, timing)
                response: web.StreamResponse = stream
            else:
                response = await self._respond(req, rid, created, timing)
            metrics.success("length")
            metrics.e2e.observe(self._elapsed())
            return response
        finally:
            self.process.release(slot)
            metrics.generation_tokens.inc(self.generated)

    def _count_cold(self, timing: Timing) -> None:
        self.paid_cold = timing.paid_cold
        self.cold = timing.cold
        if timing.paid_cold:
            if self.warmup:
                self.ctx.stats.warmup_cold_hits += 1
            else:
                self.ctx.stats.user_cold_hits += 1

    async def _respond(
        self, req: GenRequest, rid: str, created: int, timing: Timing
    ) -> web.Response:
        if req.kind is Kind.EMBEDDING:
            body = bodies.embedding_response(rid, created, req, self.ctx.config.embedding_dim)
        else:
            if req.max_tokens > 1:
                await asyncio.sleep(timing.per_token * (req.max_tokens - 1))
            self.generated = req.max_tokens * req.features.n
            body = bodies.full_response(rid, created, req)
        if self.ctx.faults.drop_mid_stream is not None:
            await self._drop()
        self.status, self.outcome = 200, "ok"
        return api.json_response(body)

    async def _stream(
        self, resp: web.StreamResponse, req: GenRequest, rid: str, created: int, timing: Timing
    ) -> None:
        sent = 0

        async def send(payload: dict[str, Any] | bytes) -> None:
            nonlocal sent
            drop_after = self.ctx.faults.drop_mid_stream
            if drop_after is not None and sent >= drop_after:
                await self._drop()
            await resp.write(payload if isinstance(payload, bytes) else api.sse(payload))
            sent += 1

        n, choices, top = req.max_tokens, req.features.n, req.features.logprobs
        if req.kind is Kind.CHAT:
            for c in range(choices):
                await send(bodies.role_chunk(rid, created, req.model, c))
        salts = [bodies.choice_salt(req.prompt_tokens, c) for c in range(choices)]
        offsets = [0] * choices
        for i in range(n):
            if i:
                await asyncio.sleep(self.ctx.faults.slow_drip or timing.per_token)
            finish = "length" if i == n - 1 else None
            for c, salt in enumerate(salts):
                text = generated_token(i, salt)
                lp = bodies.logprobs_for(req.kind, [text], i, top, salt, offsets[c])
                offsets[c] += len(text)
                chunk = bodies.token_chunk(rid, req.kind, created, req.model, text, finish, c, lp)
                await send(chunk)
                self.generated += 1
        if req.include_usage:
            usage = bodies.usage_chunk(
                rid, req.kind, created, req.model, req.prompt_tokens, n * choices,
                req.cached_tokens,
            )
            await send(usage)
        await send(api.SSE_DONE)
        await resp.write_eof()
        self.outcome = "ok"

    async def _drop(self) -> NoReturn:
        """Abort the TCP connection; connection_lost() then cancels this handler."""
        self.outcome = "dropped"
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        await self._loop.create_future()  # never resolves; cancellation ends the handler
        raise AssertionError("unreachable")
