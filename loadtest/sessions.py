"""Client load of the prefix scenario: closed-loop clients, each running multi-turn chat
sessions one after the other, seeded.

A session opens on one of `system_prompts` shared system prompts, drawn by Zipf
popularity, and lasts `turns` turns; each turn appends a user message to the history
(with the assistant's answer of the turn before), so a session's prompt grows turn by turn
and its earlier prompt is a prefix of the next. Every request is streamed and asks for
usage in its last event (`stream_options.include_usage`), so the client learns how many of
its prompt tokens the replica found cached (`usage.prompt_tokens_details.cached_tokens`);
its time to first token is the first SSE event. Each request carries a unique X-Request-Id
(the runner later finds which replica served it in the replicas' own request logs, for
balancers that do not say) and the session header, if configured.

Besides the `Sample`s every load keeps, `turns` holds one record per request: rid, t,
sys (the system prompt's index), sys_tokens, session, turn, prompt_tokens, cached_tokens
(-1 when the response had no usage), ttft, ok, replica.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import random
import time
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import aiohttp

from loadtest.prefix_spec import PrefixWorkload
from loadtest.workload import ERROR_PAUSE, Load, Sample


class Prompts:
    """The shared system prompts of a workload and the draws of sessions (seeded)."""

    def __init__(self, p: PrefixWorkload, seed: int) -> None:
        self.p = p
        sizes = random.Random(seed)
        self.tokens = [sizes.randint(*p.system_tokens) for _ in range(p.system_prompts)]
        self.texts = [" ".join(f"p{k}w{j}" for j in range(n)) for k, n in enumerate(self.tokens)]
        self._cum = list(accumulate((k + 1) ** -p.zipf for k in range(p.system_prompts)))

    def draw(self, rng: random.Random) -> int:
        x = rng.random() * self._cum[-1]
        return min(bisect.bisect_right(self._cum, x), len(self._cum) - 1)

    def share(self, k: int) -> float:
        """Prompt k's expected share of sessions."""
        return ((k + 1) ** -self.p.zipf) / self._cum[-1]


def words(tag: str, n: int) -> str:
    return " ".join(f"{tag}w{j}" for j in range(n))


def usage_of(data: bytes) -> dict[str, Any] | None:
    """The usage of a stream's last usage event (or of a JSON body)."""
    if data.lstrip().startswith(b"{"):
        try:
            u = json.loads(data).get("usage")
        except ValueError:
            return None
        return u if isinstance(u, dict) else None
    for line in reversed(data.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                u = json.loads(line[6:]).get("usage")
            except ValueError:
                return None
            if isinstance(u, dict):
                return u
    return None


def cached_of(usage: dict[str, Any] | None) -> tuple[int, int]:
    """(prompt_tokens, cached_tokens) of a usage; -1 where missing."""
    if usage is None:
        return -1, -1
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt = usage.get("prompt_tokens")
    return (prompt if isinstance(prompt, int) else -1,
            cached if isinstance(cached, int) else -1)


@dataclass
class SessionLoad(Load):
    """loadtest.workload.Load, for session traffic: closed-loop clients (the workload's
    arrivals.concurrency of them), each running sessions one after the other."""

    turns: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.workload.prefix is None:
            raise ValueError("SessionLoad needs workload.prefix")
        self.p: PrefixWorkload = self.workload.prefix
        self.prompts = Prompts(self.p, self.workload.seed)
        self.max_tokens = min(k for k, _ in self.workload.max_tokens)

    def _senders(self) -> list[asyncio.Task[None]]:
        n = self.workload.arrivals.concurrency
        return [asyncio.create_task(self._client(i)) for i in range(n)]

    async def _client(self, i: int) -> None:
        rng = random.Random(self.workload.seed * 1000 + i)
        k = 0
        while self.now() < self._stop_at:
            sys_id = self.prompts.draw(rng)
            session = f"c{i}s{k}"
            k += 1
            messages: list[dict[str, str]] = [
                {"role": "system", "content": self.prompts.texts[sys_id]}]
            for turn in range(rng.randint(*self.p.turns)):
                if self.now() >= self._stop_at:
                    return
                messages.append({"role": "user", "content": words(
                    f"{session}t{turn}u", rng.randint(*self.p.turn_tokens))})
                if not await self._turn(messages, sys_id, session, turn):
                    await asyncio.sleep(ERROR_PAUSE)
                    break  # a failed turn ends its session
                if self.p.answer_tokens:
                    messages.append({"role": "assistant", "content": words(
                        f"{session}t{turn}a", self.p.answer_tokens)})

    async def _turn(self, messages: list[dict[str, str]], sys_id: int, session: str,
                   turn: int) -> bool:
        assert self._session is not None
        rid = f"{session}t{turn}-{len(self.turns)}"
        body = json.dumps({"model": self.model, "max_tokens": self.max_tokens, "stream": True,
                           "stream_options": {"include_usage": True},
                           "messages": messages}).encode()
        headers = {"Content-Type": "application/json", "X-Request-Id": rid}
        if self.p.session_header:
            headers[self.p.session_header] = session
        t0 = time.monotonic()
        start = t0 - self.t0
        first = math.nan
        who, status, data = "", 0, b""
        self.inflight += 1
        try:
            async with self._session.post(self.url + "/v1/chat/completions", data=body,
                                          headers=headers) as r:
                status = r.status
                who = self.who(r.headers)
                async for chunk in r.content.iter_any():
                    if math.isnan(first):
                        first = time.monotonic() - t0
                    data += chunk
                end = time.monotonic() - t0
            if status != 200:
                err = f"HTTP {status}: {data[:160].decode(errors='replace')}"
            else:
                done = data.rstrip().endswith(b"data: [DONE]") and b'"error"' not in data
                err = "" if done else "cut stream"
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            end = time.monotonic() - t0
            err = f"{type(e).__name__}: {e}"[:200]
        finally:
            self.inflight -= 1
        prompt, cached = cached_of(usage_of(data) if not err else None)
        self.samples.append(Sample(start, end, first, not err, who, True, max(prompt, 0),
                                   status, err))
        self.turns.append({"rid": rid, "t": round(start, 6), "sys": sys_id,
                           "sys_tokens": self.prompts.tokens[sys_id], "session": session,
                           "turn": turn, "prompt_tokens": prompt, "cached_tokens": cached,
                           "ttft": None if math.isnan(first) else round(first, 6),
                           "ok": not err, "replica": who})
        return not err
