"""Client load for a scenario: closed-loop clients or open-loop Poisson arrivals, seeded.

Every request is one `Sample`: when it started (seconds since the load started), its
whole-request latency, the time to its first body byte (for a stream: the first SSE event,
i.e. the time to first token), whether it succeeded, which replica answered (from a
response header the balancer sets) and its feature mix (loadtest.mixes). Only loopback URLs
are accepted.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate

import aiohttp

from loadtest.loadgen import loopback
from loadtest.mixes import Mix, prompt_text
from loadtest.spec import Workload

Who = Callable[[Mapping[str, str]], str]
SHED = "shed: max_inflight reached"
ERROR_PAUSE = 0.05  # s a closed-loop client waits after a failed request


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # start, seconds since the load started
    lat: float  # whole request, s
    ttfb: float  # first body byte, s (nan when none came)
    ok: bool
    replica: str
    stream: bool
    words: int
    status: int = 0
    error: str = ""
    mix: str = ""  # the feature mix's name ("": none configured)


@dataclass(frozen=True, slots=True)
class Shape:
    words: int
    max_tokens: int
    stream: bool
    chat: bool
    mix: Mix | None = None
    usage: bool = False  # a stream that asks for usage (stream_options.include_usage)


class Picker:
    """Draws request shapes from the workload's mix with one seeded random.Random."""

    def __init__(self, w: Workload, seed: int) -> None:
        self.w = w
        self.rng = random.Random(seed)
        self._words = [k for k, _ in w.prompt_words]
        self._wcum = list(accumulate(v for _, v in w.prompt_words))
        self._tokens = [k for k, _ in w.max_tokens]
        self._tcum = list(accumulate(v for _, v in w.max_tokens))
        self._mixes = list(w.mixes)
        self._mcum = list(accumulate(m.weight for m in w.mixes))
        self._mix_words = {m.name: ([k for k, _ in m.prompt_words],
                                    list(accumulate(v for _, v in m.prompt_words)))
                           for m in w.mixes if m.prompt_words}

    def _choose(self, keys: list[int], cum: list[float]) -> int:
        x = self.rng.random() * cum[-1]
        return keys[min(bisect.bisect_right(cum, x), len(keys) - 1)]

    def next(self) -> Shape:
        # the draws of a workload without mixes or stream_usage are those of before them
        words = self._choose(self._words, self._wcum)
        max_tokens = self._choose(self._tokens, self._tcum)
        stream = self.rng.random() < self.w.stream_fraction
        chat = self.rng.random() < self.w.chat_fraction
        mix = None
        if self._mixes:
            x = self.rng.random() * self._mcum[-1]
            mix = self._mixes[min(bisect.bisect_right(self._mcum, x), len(self._mixes) - 1)]
            if mix.name in self._mix_words:
                words = self._choose(*self._mix_words[mix.name])
            if mix.kind:
                chat = mix.kind == "chat"
        usage = stream and self.w.stream_usage > 0 and self.rng.random() < self.w.stream_usage
        return Shape(words, max_tokens, stream, chat, mix, usage)


def every_request(w: Workload) -> list[Shape]:
    """One request, not streamed, of each prompt size, kind and mix the workload sends."""
    max_tokens = min(k for k, _ in w.max_tokens)
    kinds = [c for c, share in ((True, w.chat_fraction), (False, 1 - w.chat_fraction))
             if share > 0]
    out = []
    for mix in w.mixes or (None,):
        sizes = mix.prompt_words if mix is not None and mix.prompt_words else w.prompt_words
        chats = [mix.kind == "chat"] if mix is not None and mix.kind else kinds
        out += [Shape(words, max_tokens, False, chat, mix) for words, _ in sizes
                for chat in chats]
    return out


def request_for(shape: Shape, model: str, text_kind: str = "repeat") -> tuple[str, bytes]:
    text = prompt_text(shape.words, text_kind)
    mix = shape.mix
    body: dict[str, object] = {"model": mix.model if mix and mix.model else model,
                               "max_tokens": shape.max_tokens, "stream": shape.stream}
    if shape.usage:
        body["stream_options"] = {"include_usage": True}
    if mix is not None:
        body.update(mix.body())
    if shape.chat:
        body["messages"] = [{"role": "user", "content": text}]
        return "/v1/chat/completions", json.dumps(body).encode()
    body["prompt"] = text
    return "/v1/completions", json.dumps(body).encode()


@dataclass
class Load:
    """`await load.start(stop_at)`, then `await load.wait()`: samples pile up in .samples."""

    url: str
    workload: Workload
    model: str
    who: Who
    samples: list[Sample] = field(default_factory=list)
    inflight: int = 0
    t0: float = 0.0

    def __post_init__(self) -> None:
        if not loopback(self.url):
            raise ValueError(f"only loopback targets are allowed, got {self.url!r}")
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[bool]] = set()
        self._stop_at = math.inf
        self._session: aiohttp.ClientSession | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    @property
    def errors(self) -> int:
        return sum(not s.ok for s in self.samples)

    async def start(self, stop_at: float) -> None:
        """Start sending; no request starts after stop_at (seconds since start)."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60.0),
            timeout=aiohttp.ClientTimeout(total=self.workload.request_timeout),
        )
        self.t0 = time.monotonic()
        self._stop_at = stop_at
        self._tasks = self._senders()

    def _senders(self) -> list[asyncio.Task[None]]:
        """The tasks that send: closed-loop clients, or one Poisson arrival process."""
        a = self.workload.arrivals
        if a.kind == "closed":
            return [asyncio.create_task(self._client(i)) for i in range(a.concurrency)]
        return [asyncio.create_task(self._poisson())]

    def stop_at(self, t: float) -> None:
        """Move the end (only earlier or later than now; requests already sent run on)."""
        self._stop_at = t

    async def wait(self, grace: float) -> None:
        """Until every request has ended, at most stop_at + grace seconds after start."""
        try:
            left = max(0.0, self._stop_at - self.now()) + grace
            async with asyncio.timeout(left):
                await asyncio.gather(*self._tasks, return_exceptions=True)
                while self._spawned:
                    await asyncio.gather(*list(self._spawned), return_exceptions=True)
        except TimeoutError:
            pass
        finally:
            await self.close()

    async def close(self) -> None:
        for t in [*self._tasks, *self._spawned]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._spawned, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _client(self, i: int) -> None:
        picker = Picker(self.workload, self.workload.seed * 1000 + i)
        while self.now() < self._stop_at:
            if not await self._one(picker.next()):
                await asyncio.sleep(ERROR_PAUSE)  # no tight loop on fast failures

    async def _poisson(self) -> None:
        a = self.workload.arrivals
        arrivals = random.Random(self.workload.seed)
        picker = Picker(self.workload, self.workload.seed * 1000 + 1)
        t = 0.0
        while True:
            t += arrivals.expovariate(a.rate)
            if t >= self._stop_at:
                return
            delay = t - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            shape = picker.next()
            if self.inflight >= a.max_inflight:
                self.samples.append(Sample(t, 0.0, math.nan, False, "", shape.stream,
                                           shape.words, 0, SHED, _mix(shape)))
                continue
            task = asyncio.create_task(self._one(shape))
            self._spawned.add(task)
            task.add_done_callback(self._spawned.discard)

    async def _one(self, shape: Shape) -> bool:
        assert self._session is not None
        path, body = request_for(shape, self.model, self.workload.text)
        t0 = time.monotonic()
        start = t0 - self.t0
        first = math.nan
        who, status = "", 0
        self.inflight += 1
        try:
            async with self._session.post(
                self.url + path, data=body, headers={"Content-Type": "application/json"}
            ) as r:
                status = r.status
                who = self.who(r.headers)
                data = b""
                async for chunk in r.content.iter_any():
                    if math.isnan(first):
                        first = time.monotonic() - t0
                    data += chunk
                end = time.monotonic() - t0
            if status != 200:
                err = f"HTTP {status}: {data[:160].decode(errors='replace')}"
            elif shape.stream:
                done = data.rstrip().endswith(b"data: [DONE]") and b'"error"' not in data
                err = "" if done else "cut stream"
            else:
                err = "" if b'"choices"' in data else "no choices in the body"
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            end = time.monotonic() - t0
            err = f"{type(e).__name__}: {e}"[:200]
        finally:
            self.inflight -= 1
        self.samples.append(Sample(start, end, first, not err, who, shape.stream, shape.words,
                                   status, err, _mix(shape)))
        return not err


def _mix(shape: Shape) -> str:
    return shape.mix.name if shape.mix is not None else ""
