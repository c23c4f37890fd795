"""The gateway warms a replica itself: rounds of synthetic requests until every request
shape's latency has converged (see core/warm.py for what a round sends and the rule).

Prompts are sized in the replica's own tokens (warmgw.sizing). A warmup request the
replica refuses (4xx) is the warmup's mistake, not the replica's: that shape is dropped
and logged, and the replica is never ejected for it; a prompt refused as too long is
shrunk and tried again first. Only a replica that fails (5xx, a broken connection, a
timeout) fails its warmup.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from warmgw.core.clock import Clock
from warmgw.core.shapes import PLAIN, ShapeKey, TokenRatios, fine
from warmgw.core.warm import Convergence, WarmProfile, WarmShape
from warmgw.sizing import Sizer

log = logging.getLogger("warmgw.warmup")

WARMUP_HEADER = "X-Warmgw-Warmup"
SHRINKS = 3  # a prompt refused as too long is halved at most this often
EXTRA_ROUNDS = 2  # rounds that send the learned shapes and adapters
# a 1x1 PNG and a 10 ms silent WAV: the smallest media a multimodal encoder runs on
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
       "/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg==")
WAV = "UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA"


class WarmupFailed(Exception):
    """The replica failed a warmup request on its side."""


class Refused(Exception):
    """The replica refused a warmup request (4xx): the warmup's own mistake."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.too_long = status == 400 and ("context length" in text or "maximum context"
                                           in text or "too long" in text)


@dataclass(frozen=True, slots=True)
class WarmResult:
    converged: bool
    rounds: int
    seconds: float
    requests: int
    latencies: dict[str, float]  # the last round's, per shape
    unsettled: tuple[str, ...]
    sent: frozenset[ShapeKey] = frozenset()  # the feature-shapes the replica has served
    dropped: tuple[str, ...] = ()  # shapes the replica refused, with why


class _Run:
    """One warmup of one replica: where, and what it learned on the way."""

    def __init__(self, url: str, base: str, limit: int, specs: dict[str, str]) -> None:
        self.url = url
        self.base = base
        self.limit = limit
        self.specs = specs
        self.requests = 0
        self.sent: set[ShapeKey] = set()
        self.dropped: dict[str, str] = {}
        self.shrunk: dict[str, int] = {}  # shape key -> prompt tokens after shrinking


class Warmer:
    def __init__(self, session: aiohttp.ClientSession, profile: WarmProfile, clock: Clock,
                 ratios: TokenRatios | None = None) -> None:
        self.session = session
        self.p = profile
        self.clock = clock
        self.sizer = Sizer(session, ratios or TokenRatios())
        self.requests_sent = 0
        self.refused = 0  # warmup requests replicas refused (shapes dropped)

    async def _body(self, run: _Run, shape: WarmShape) -> tuple[str, dict[str, Any], int]:
        n = run.shrunk.get(shape.key, shape.prompt_tokens)
        model = shape.model or run.base
        body: dict[str, Any] = {"model": model, "max_tokens": shape.max_tokens,
                                "temperature": 0, "stream": shape.stream}
        f = shape.features
        if shape.kind == "chat":
            text, tokens = await self.sizer.chat_content(run.url, run.base, n, run.limit)
            content: Any = text
            if f.media:
                content = [{"type": "text", "text": text}]
                if "image" in f.media:
                    content.append({"type": "image_url", "image_url": {"url": PNG}})
                if "audio" in f.media:
                    content.append({"type": "input_audio",
                                    "input_audio": {"data": WAV, "format": "wav"}})
            body["messages"] = [{"role": "user", "content": content}]
            path = "/v1/chat/completions"
            if f.logprobs:
                body["logprobs"] = True
                if f.logprobs > 1:
                    body["top_logprobs"] = f.logprobs - 1
        else:
            prompt, tokens = await self.sizer.completion_prompt(run.url, run.base, n,
                                                                run.limit)
            body["prompt"] = prompt
            path = "/v1/completions"
            if f.logprobs:
                body["logprobs"] = f.logprobs - 1
        if f.n > 1:
            body["n"] = f.n
            body["temperature"] = 1.0  # vLLM refuses n > 1 with greedy sampling
        for spec_id in (f.schema, f.tools):
            if spec_id:
                spec = run.specs.get(spec_id)
                if spec is None:
                    raise Refused(0, f"spec {spec_id} is not kept (profile.keep_specs)")
                body.update({k: v for k, v in json.loads(spec).items() if v is not None})
        return path, body, tokens or n

    async def _one(self, run: _Run, shape: WarmShape) -> float:
        path, body, tokens = await self._body(run, shape)
        t0 = self.clock.now()
        self.requests_sent += 1
        run.requests += 1
        timeout = aiohttp.ClientTimeout(total=self.p.request_timeout)
        async with self.session.post(
            run.url + path, data=json.dumps(body), timeout=timeout,
            headers={WARMUP_HEADER: "1", "Content-Type": "application/json"},
        ) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                if 400 <= resp.status < 500:
                    raise Refused(resp.status, text)
                raise WarmupFailed(f"{path} answered {resp.status}: {text}")
            if not shape.stream:
                data = await resp.read()
                took = self.clock.now() - t0
                tokens = _usage_prompt_tokens(data) or tokens
            else:
                took = -1.0
                async for _chunk in resp.content.iter_any():
                    if took < 0.0:
                        took = self.clock.now() - t0
                if took < 0.0:
                    took = self.clock.now() - t0
        run.sent.add(ShapeKey(body["model"], shape.kind, shape.stream, fine(tokens),
                              shape.features))
        return took

    async def _measure(self, run: _Run, shape: WarmShape) -> float | None:
        """The shape's latency this round, or None if the replica refused it (dropped)."""
        for _ in range(SHRINKS + 1):
            try:
                if shape.concurrency == 1:
                    return await self._one(run, shape)
                one = WarmShape(shape.kind, shape.stream, shape.prompt_tokens,
                                shape.max_tokens, 1, shape.model, shape.features)
                return max(await asyncio.gather(
                    *(self._one(run, one) for _ in range(shape.concurrency))))
            except Refused as e:
                n = run.shrunk.get(shape.key, shape.prompt_tokens)
                if e.too_long and n > 1:
                    run.shrunk[shape.key] = max(1, n // 2)
                    continue
                self._drop(run, shape, str(e))
                return None
        self._drop(run, shape, "refused as too long even when shrunk")
        return None

    def _drop(self, run: _Run, shape: WarmShape, why: str) -> None:
        self.refused += 1
        run.dropped[shape.key] = why
        log.warning("warmup of %s: shape %s dropped, the replica refused it (%s)", run.url,
                    shape.key, why[:200])

    async def replay(self, url: str, model: str, route: str, body: dict[str, Any]
                     ) -> int | None:
        """Send a kept prefix (core.keep) as a max_tokens 1 request, so that the replica's
        prefix cache holds it: the prompt tokens its usage reported (0 if it did not say),
        or None for a refusal (4xx, logged)."""
        path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
        data = {"model": model, **body, "max_tokens": 1, "temperature": 0, "stream": False}
        self.requests_sent += 1
        timeout = aiohttp.ClientTimeout(total=self.p.request_timeout)
        async with self.session.post(
            url + path, data=json.dumps(data), timeout=timeout,
            headers={WARMUP_HEADER: "1", "Content-Type": "application/json"},
        ) as resp:
            text = await resp.read()
            if 400 <= resp.status < 500:
                self.refused += 1
                log.warning("prefix warmup of %s: a kept prefix refused: HTTP %d %s", url,
                            resp.status, text[:200].decode("utf-8", "replace"))
                return None
            if resp.status != 200:
                raise WarmupFailed(f"{path} answered {resp.status}")
        return _prompt_tokens(text)

    async def keep_warm(self, url: str, model: str, max_model_len: int | None) -> float:
        """One small synthetic request, so an idle standby replica does not go cold."""
        shape = self.p.shapes(max_model_len)[0]
        run = _Run(url, model, self.p.limit(max_model_len), {})
        return await self._one(run, WarmShape(shape.kind, False, shape.prompt_tokens,
                                              shape.max_tokens))

    async def warm(
        self,
        url: str,
        model: str,
        max_model_len: int | None,
        reference: dict[str, float] | None,
        name: str = "",
        extra: list[WarmShape] | None = None,
        specs: dict[str, str] | None = None,
    ) -> WarmResult:
        """Warm one replica: the grid on its base model, then `extra` (the shapes users
        send, its adapters). Raises WarmupFailed (or aiohttp errors) if it fails."""
        grid = self.p.shapes(max_model_len)
        run = _Run(url, model, self.p.limit(max_model_len), specs or {})
        conv = Convergence(self.p, reference)
        start = self.clock.now()
        converged = False
        while len(conv.rounds) < self.p.max_rounds:
            latencies = {}
            for shape in grid:
                if shape.key in run.dropped:
                    continue
                took = await self._measure(run, shape)
                if took is not None:
                    latencies[shape.key] = took
            # what users send, and adapters: first uses (a grammar, a compile, a load), paid
            # by the first request; sent in the first two rounds, not waited on to converge
            if len(conv.rounds) < EXTRA_ROUNDS:
                for shape in extra or ():
                    if shape.key not in run.dropped:
                        await self._measure(run, shape)
            converged = conv.add_round(latencies)
            log.debug("warmup %s round %d: %s", name, len(conv.rounds), latencies)
            if converged or self.clock.now() - start >= self.p.deadline:
                break
        return WarmResult(
            converged=converged,
            rounds=len(conv.rounds),
            seconds=self.clock.now() - start,
            requests=run.requests,
            latencies=conv.last,
            unsettled=tuple(conv.unsettled()),
            sent=frozenset(run.sent),
            dropped=tuple(f"{k}: {v}" for k, v in run.dropped.items()),
        )


def _usage_prompt_tokens(data: bytes) -> int:
    try:
        usage = json.loads(data).get("usage") or {}
        n = usage.get("prompt_tokens")
        return n if isinstance(n, int) else 0
    except (ValueError, AttributeError):
        return 0


__all__ = ["PLAIN", "WARMUP_HEADER", "Refused", "WarmResult", "Warmer", "WarmupFailed"]


def _prompt_tokens(text: bytes) -> int:
    """usage.prompt_tokens of a JSON answer; 0 when it has none."""
    try:
        got = json.loads(text)["usage"]["prompt_tokens"]
    except (ValueError, KeyError, TypeError):
        return 0
    return got if isinstance(got, int) and not isinstance(got, bool) and got > 0 else 0
