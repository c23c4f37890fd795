"""Client load for scenario tests: closed-loop workers sending a mix of request shapes."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import aiohttp

PROMPT_WORDS = (8, 100, 600)  # within the 16 / 256 / 1024 token buckets


@dataclass(frozen=True, slots=True)
class Sample:
    start: float
    latency: float  # time to first byte for streams, whole request otherwise
    ok: bool
    stream: bool
    error: str = ""
    replica: str = ""  # X-Warmgw-Replica: who answered


@dataclass
class Load:
    url: str
    concurrency: int = 8
    max_tokens: int = 8
    seed: int = 0
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        self._tasks = [
            asyncio.create_task(self._worker(random.Random(self.seed * 1000 + i)))
            for i in range(self.concurrency)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def _worker(self, rng: random.Random) -> None:
        while not self._stop.is_set():
            words = rng.choice(PROMPT_WORDS)
            stream = rng.random() < 0.5
            chat = rng.random() < 0.5
            self.samples.append(await self._one(words, stream, chat))

    async def _one(self, words: int, stream: bool, chat: bool) -> Sample:
        text = " ".join(["word"] * words)
        body: dict[str, object] = {"model": "tiny", "max_tokens": self.max_tokens,
                                   "stream": stream}
        if chat:
            body["messages"] = [{"role": "user", "content": text}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = text
            path = "/v1/completions"
        t0 = time.monotonic()
        try:
            async with self._session.post(self.url + path, data=json.dumps(body),
                                          headers={"Content-Type": "application/json"}) as r:
                who = r.headers.get("X-Warmgw-Replica", "")
                if r.status != 200:
                    err = f"HTTP {r.status}: {(await r.text())[:200]}"
                    return Sample(t0, time.monotonic() - t0, False, stream, err, who)
                if not stream:
                    await r.read()
                    return Sample(t0, time.monotonic() - t0, True, stream, "", who)
                ttfb = -1.0
                data = b""
                async for chunk in r.content.iter_any():
                    if ttfb < 0:
                        ttfb = time.monotonic() - t0
                    data += chunk
                complete = data.rstrip().endswith(b"data: [DONE]") and b'"error"' not in data
                err = "" if complete else "cut stream"
                return Sample(t0, ttfb, complete, stream, err, who)
        except (aiohttp.ClientError, TimeoutError) as e:
            return Sample(t0, time.monotonic() - t0, False, stream, repr(e))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary(samples: list[Sample]) -> dict[str, float]:
    lat = [s.latency for s in samples if s.ok]
    return {
        "requests": len(samples),
        "errors": sum(not s.ok for s in samples),
        "p50": percentile(lat, 0.50),
        "p99": percentile(lat, 0.99),
        "max": max(lat) if lat else float("nan"),
    }
