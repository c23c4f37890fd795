"""Prefix affinity without a tokenizer: chained hashes of fixed-size chunks of a prompt's
bytes, and an approximate index of which replica recently served which chain.

Hashing. The rendered prompt (a chat's messages in order, role and text; a completion's
prompt) is cut into `chunk_bytes` chunks; only full chunks count (as vLLM caches only full
blocks). Chunk i's hash is zlib.crc32 of chunk i continued from chunk i-1's hash (seeded
with the model name): crc32 chains natively, so hash i names the whole prefix up to chunk
i, at C speed (an 8 KB prompt in a few microseconds). 32 bits: a rare collision costs one
misplaced affinity pick, never a wrong answer.

Index. Per replica, the chains it was sent, in LRU order, at most `replica_chunks` of them
(sized from what its cache can hold: the tokens its /metrics reports, vLLM's
cache_config_info, else `replica_cache_tokens`, x bytes per token);
an entry older than `ttl` seconds is not trusted (the replica may have evicted it), and
a replica not sent anything for `ttl` is forgotten whole (it may be gone). A request's
chunks are recorded tail first, as vLLM frees a request's blocks, so a prefix's head
outlives its tail here as it does in the replica.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class PrefixParams:
    enabled: bool = False
    chunk_bytes: int = 256
    max_chunks: int = 256  # the first 64 KB of a prompt at most
    replica_chunks: int = 16384  # chunks remembered per replica, when its cache size is unknown
    replica_cache_tokens: int = 0  # a replica's prefix cache in tokens (0: unknown)
    # the index remembers this many times what a replica's cache holds: forgetting a
    # prefix the replica still holds misplaces its next request (a miss where there could
    # have been a hit), remembering one it evicted sends it where it misses anyway
    index_headroom: float = 1.25
    ttl: float = 600.0
    epsilon: float = 0.25  # bounded load: at most (1 + epsilon) x its weighted fair share
    # a session's next turn goes back to its replica while that one stays within
    # (1 + session_epsilon) x its share: moved, it loses its whole history's cache, while
    # a new placement spilled loses a shared prefix at most (sessions start under epsilon)
    session_epsilon: float = 0.5
    slack: float = 3.0  # requests over its share a replica may take whatever epsilon says
    # s: the time constant of each replica's decayed count of recent picks, which the
    # bound also caps (so request counts stay within it, not only requests in flight);
    # 0: the in-flight bound only
    share_window: float = 0.0  # s; off by default (see README: a ramping newcomer at low load)
    load_cost: float = 1.0  # cached chunks worth one more request in flight per unit of
    # weight above the group's mean (below it, load does not count against a holder)
    min_chunks: int = 1  # fewer cached chunks than this: no affinity
    # latency compared per uncached prompt token (the ramp and the fleet's baseline key a
    # request by its uncached part: the replica's cached_tokens, else the index's estimate)
    uncached_latency: bool = True
    # prefix-cache warmup (core.keep): keep the text of prefixes that keep_min_users
    # distinct senders shared, at most keep_bytes of it; a warmup replays at most
    # warm_prefixes of them, for at most warm_seconds
    keep_prefixes: bool = False
    keep_bytes: int = 1 << 20
    keep_min_users: int = 3
    warm_prefixes: int = 64
    warm_seconds: float = 10.0
    # the share of a replica's prefix cache the replay may fill (by the prompt tokens the
    # replica reports), the rest left for the traffic it takes: a replay that overfilled
    # it would evict its own first (hottest) prefixes
    warm_cache_share: float = 0.5


@dataclass(frozen=True, slots=True)
class SessionParams:
    header: str = ""  # a request header naming the session ("": none)
    use_user_field: bool = False  # the OpenAI `user` field names the session
    ttl: float = 600.0
    max_sessions: int = 100000


@dataclass(frozen=True, slots=True)
class RoutingParams:
    prefix: PrefixParams = field(default_factory=PrefixParams)
    session: SessionParams = field(default_factory=SessionParams)

    @property
    def active(self) -> bool:
        s = self.session
        return self.prefix.enabled or bool(s.header) or s.use_user_field


def texts_of(messages: Sequence[Any]) -> list[str]:
    """The texts of chat messages as render() joins them: each role, then its text parts."""
    out: list[str] = []
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        role = m.get("role")
        out.append(role if isinstance(role, str) else "")
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            out.extend(p["text"] for p in c
                       if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return out


def render(route: str, obj: Mapping[str, Any]) -> bytes:
    """The bytes a prompt is cut into chunks from (b"" when it has no text prompt)."""
    if route == "chat":
        messages = obj.get("messages")
        if not isinstance(messages, list):
            return b""
        return "\x1e".join(texts_of(messages)).encode("utf-8", "surrogatepass")
    prompt = obj.get("prompt")
    if isinstance(prompt, str):
        return prompt.encode("utf-8", "surrogatepass")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return "\x1e".join(p for p in prompt if isinstance(p, str)).encode(
            "utf-8", "surrogatepass")
    return b""


def chain(data: bytes, seed: int, chunk_bytes: int, max_chunks: int) -> tuple[int, ...]:
    """The chained hash of each full chunk of data (at most max_chunks of them)."""
    n = min(len(data) // chunk_bytes, max_chunks)
    if n == 0:
        return ()
    view = memoryview(data)
    out = [0] * n
    h = seed
    crc = zlib.crc32
    i = 0
    for k in range(n):
        j = i + chunk_bytes
        h = crc(view[i:j], h)
        out[k] = h
        i = j
    return tuple(out)


def chunks_of(route: str, obj: Mapping[str, Any], model: str, p: PrefixParams
              ) -> tuple[int, ...]:
    return text_chunks(route, obj, model, p)[1]


def text_chunks(route: str, obj: Mapping[str, Any], model: str, p: PrefixParams
                ) -> tuple[int, tuple[int, ...]]:
    """(bytes of the prompt's rendered text, the chained hashes of its full chunks)."""
    text = render(route, obj)
    return len(text), chain(text, zlib.crc32(model.encode()), p.chunk_bytes, p.max_chunks)


class PrefixIndex:
    """Which replica (by name) was recently sent which chunk chain."""

    SWEEP_EVERY = 1024  # records between sweeps of replicas not sent anything for ttl

    def __init__(self, params: PrefixParams) -> None:
        self.params = params
        self._where: dict[int, dict[str, float]] = {}  # chunk -> replica -> last sent
        self._lru: dict[str, OrderedDict[int, None]] = {}  # replica -> its chunks, LRU
        self._last: dict[str, float] = {}  # replica -> last record
        self._records = 0

    def __len__(self) -> int:
        return sum(len(x) for x in self._lru.values())

    def replicas(self) -> list[str]:
        return list(self._lru)

    def match(self, chunks: Sequence[int], now: float) -> dict[str, int]:
        """How many leading chunks each replica was recently sent (replicas with none are
        left out). Chained hashes: holding chunk i means having been sent the prefix up
        to i, so each replica's depth is found by bisection, O(replicas x log chunks)."""
        where = self._where
        first = where.get(chunks[0]) if chunks else None
        if not first:
            return {}
        oldest = now - self.params.ttl
        depth: dict[str, int] = {}
        for name, t in first.items():
            if t < oldest:
                continue
            lo, hi = 1, len(chunks)  # it holds chunks[:lo]; not beyond chunks[:hi]
            while lo < hi:
                mid = (lo + hi + 1) // 2
                on = where.get(chunks[mid - 1])
                seen = on.get(name) if on is not None else None
                if seen is not None and seen >= oldest:
                    lo = mid
                else:
                    hi = mid - 1
            depth[name] = lo
        return depth

    def record(self, name: str, chunks: Sequence[int], now: float, capacity: int) -> None:
        """Chunks were sent to replica `name`, which keeps at most `capacity` of them."""
        lru = self._lru.get(name)
        if lru is None:
            lru = self._lru[name] = OrderedDict()
        where = self._where
        for h in reversed(chunks):
            on = where.get(h)
            if on is None:
                where[h] = {name: now}
            else:
                on[name] = now
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > capacity:
            self._drop(name, lru.popitem(last=False)[0])
        self._last[name] = now
        self._records += 1
        if self._records % self.SWEEP_EVERY == 0:
            self.sweep(now)

    def _drop(self, name: str, h: int) -> None:
        on = self._where.get(h)
        if on is not None:
            on.pop(name, None)
            if not on:
                del self._where[h]

    def forget(self, name: str) -> None:
        """Drop everything known of one replica."""
        for h in self._lru.pop(name, ()):
            self._drop(name, h)
        self._last.pop(name, None)

    def sweep(self, now: float) -> None:
        oldest = now - self.params.ttl
        for name in [n for n, t in self._last.items() if t < oldest]:
            self.forget(name)


class SessionIndex:
    """Session key -> the replica it was last sent to (LRU, at most max_sessions, ttl)."""

    def __init__(self, params: SessionParams) -> None:
        self.params = params
        self._where: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._where)

    def get(self, key: str, now: float) -> str | None:
        got = self._where.get(key)
        if got is None or got[1] < now - self.params.ttl:
            return None
        return got[0]

    def put(self, key: str, name: str, now: float) -> None:
        w = self._where
        w[key] = (name, now)
        w.move_to_end(key)
        while len(w) > self.params.max_sessions:
            w.popitem(last=False)
