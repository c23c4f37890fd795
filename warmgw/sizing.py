"""Warmup prompts of a given size in the replica's own tokens.

A prompt of N "words" is not N tokens: a real tokenizer splits words (the test model splits
"hello" in two), so a warmup that guessed sizes sent prompts over max_model_len and had
every request refused. Sizes are measured with the replica's tokenizer instead (vLLM's
POST /tokenize, once per model, cached):
- completions: the token ids of a long text, cut to exactly N (a prompt may be token ids);
- chat: text whose messages, with the chat template, come to N tokens (a few /tokenize
  calls per size, cached), or as close below as whole words allow.
A replica without /tokenize gets text at an assumed two tokens per word, and the warmup
shrinks a prompt the replica refuses as too long (warmgw.warmup).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from warmgw.core.shapes import TokenRatios

log = logging.getLogger("warmgw.warmup")

# Common English words, so that bytes per token is near what prose costs.
WORDS = (
    "time person year way day thing man world life hand part child eye woman place work "
    "week case point government company number group problem fact be have do say get make "
    "go know take see come think look want give use find tell ask seem feel try leave call "
    "good new first last long great little own other old right big high different small "
    "large next early young important few public bad same able to of in for on with at by "
    "from up about into over after the and a that I it not he as you this but his they her "
    "she or an will my one all would there their what so out if who which go me when can "
    "river mountain garden window letter market question answer morning evening summer"
).split()
GUESS_TOKENS_PER_WORD = 2.0  # without /tokenize: a guess on the safe side
MAX_STEPS = 6  # /tokenize calls to size one chat prompt


def text_of(words: int) -> str:
    n = len(WORDS)
    return " ".join(WORDS[(i * 7 + i // n) % n] for i in range(max(1, words)))


@dataclass(slots=True)
class _Model:
    ids: list[int] = field(default_factory=list)  # token ids of a long text
    words_per_token: float = 1.0
    limit: int = 0  # the largest size these ids were asked for (fewer may be all there is)
    chat: dict[int, tuple[str, int]] = field(default_factory=dict)  # n -> (text, tokens)


class Sizer:
    def __init__(self, session: aiohttp.ClientSession, ratios: TokenRatios,
                 timeout: float = 30.0) -> None:
        self.session = session
        self.ratios = ratios
        self.timeout = timeout
        self._models: dict[str, _Model | None] = {}  # None: no /tokenize there
        self._locks: dict[str, asyncio.Lock] = {}

    async def _tokenize(self, url: str, body: dict[str, Any]) -> tuple[int, list[int]] | None:
        """(count, ids), or None when the replica serves no /tokenize."""
        async with self.session.post(
            url + "/tokenize", data=json.dumps(body), headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        ) as r:
            if r.status in (404, 405, 501):
                return None
            data = await r.json(content_type=None)
            if r.status != 200 or not isinstance(data, dict):
                raise ValueError(f"/tokenize answered {r.status}: {str(data)[:200]}")
            ids = data.get("tokens")
            count = data.get("count", len(ids) if isinstance(ids, list) else 0)
            return int(count), [int(t) for t in ids] if isinstance(ids, list) else []

    async def model(self, url: str, model: str, limit: int) -> _Model | None:
        """What the model's tokenizer makes of text: ids enough for `limit` tokens."""
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            if model in self._models:
                known = self._models[model]
                if known is None or known.limit >= limit:
                    return known
            # a short text first (a replica may refuse to tokenize more than its context),
            # then one of about `limit` tokens at the ratio measured
            m: _Model | None = None
            words = 256
            for _ in range(2):
                text = text_of(words)
                try:
                    got = await self._tokenize(url, {"model": model, "prompt": text})
                except ValueError as e:
                    log.info("replica %s: /tokenize failed (%s)", url, e)
                    got = None
                if got is None:
                    if m is None:
                        log.info("replica %s: no /tokenize; warmup prompts sized by a guess "
                                 "of %g tokens per word", url, GUESS_TOKENS_PER_WORD)
                    break
                count, ids = got
                if m is None or len(ids) > len(m.ids):
                    m = _Model(ids, words / max(1, count))
                self.ratios.set(model, len(text.encode()), count)
                if len(ids) >= limit or not ids:
                    break
                words = int(limit * m.words_per_token * 0.9)
                if words <= 256:
                    break
            if m is not None:
                m.limit = limit  # asked once for this size; ids are repeated beyond them
            self._models[model] = m
            return m

    async def completion_prompt(self, url: str, model: str, n: int,
                                limit: int) -> tuple[str | list[int], int]:
        """A completions prompt of n tokens, and its size (0: unknown)."""
        m = await self.model(url, model, limit)
        if m is None or not m.ids:
            return text_of(int(n / GUESS_TOKENS_PER_WORD)), 0
        ids = m.ids
        if len(ids) >= n:
            return ids[:n], n
        return (ids * (n // len(ids) + 1))[:n], n

    async def chat_content(self, url: str, model: str, n: int,
                           limit: int) -> tuple[str, int]:
        """User-message text whose chat prompt is n tokens (as near below as words allow),
        and its size (0: unknown)."""
        m = await self.model(url, model, limit)
        if m is None:
            return text_of(int(n / GUESS_TOKENS_PER_WORD)), 0
        hit = m.chat.get(n)
        if hit is not None:
            return hit
        best: tuple[str, int] | None = None
        words = max(1, int(n * m.words_per_token))
        tried: set[int] = set()
        for _ in range(MAX_STEPS):
            if words in tried:
                break
            tried.add(words)
            text = text_of(words)
            try:
                got = await self._tokenize(url, {"model": model, "messages": [
                    {"role": "user", "content": text}]})
            except ValueError:
                got = None  # e.g. a tokenizer without a chat template
            if got is None:
                return text_of(int(n / GUESS_TOKENS_PER_WORD)), 0
            count = got[0]
            if count <= n and (best is None or count > best[1]):
                best = (text, count)
            if count == n:
                break
            step = (n - count) * m.words_per_token
            words = max(1, words + (int(step) if abs(step) >= 1 else (1 if step > 0 else -1)))
        if best is None:  # even one word is over n (the chat template alone): the smallest
            best = (text_of(1), count)
        m.chat[n] = best
        return best
