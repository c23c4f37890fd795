"""What a warmup sends and when it is done.

A round sends, one at a time:
1. the default grid, on the base model: every power-of-two prompt size from 1 token up to
   the largest prompt the model accepts (max_model_len - max_tokens), or the configured
   `prompt_lengths`, plus any `extra_prompt_lengths`, x max_tokens x chat/completions x
   stream/not; then bursts at vLLM's CUDA-graph batch sizes (1, 2, 4, 8, 16, 24, ... up to
   `max_batch`) so batch-size specific kernels and graphs get built too;
2. the shapes users send (core.profile), most used first, within `learned_requests`: each
   at the smallest and the largest prompt size seen in its bucket, with its real features
   (structured-output spec, tools, logprobs, n, media) and its model or adapter name;
3. the adapters the replica lists that users have not sent yet, most used first, one
   small request each, so that at most `max_lora` adapters are loaded by the warmup.
2 and 3 are first uses (a grammar compiled, an op compiled, an adapter loaded): they are
sent in the first two rounds and not waited on to converge; the grid's rounds go on until
its latencies settle.
A shape's latency is its time to first byte for a stream, its whole duration otherwise,
the slowest request for a burst.

A shape has settled in round r when
  - it is within tolerance of the fleet's warm reference for that shape (the latencies of
    the last replica of this model that converged), or
  - r >= 2 and it did not improve on round r-1 by more than max(tolerance * previous,
    abs_tolerance): it stopped getting faster.
Warmup has converged when every shape has settled. So a replica that is already warm
finishes in one round when the fleet has a reference, the first replica of a model needs
at least two, and a cold one keeps going until its latencies stop falling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from warmgw.core.profile import Learned
from warmgw.core.shapes import PLAIN, Features, ShapeKey


class OnDeadline(StrEnum):
    HOLD = "hold"  # stay out of rotation; ejected and tried again later
    RAMP = "ramp"  # ramp anyway; the latency ramp still guards real traffic


@dataclass(frozen=True, slots=True)
class WarmShape:
    kind: str  # "chat" or "completions"
    stream: bool
    prompt_tokens: int
    max_tokens: int
    concurrency: int = 1
    model: str = ""  # "": the replica's base model; else a model or adapter name
    features: Features = PLAIN

    @property
    def key(self) -> str:
        mode = "stream" if self.stream else "json"
        key = f"{self.kind}/{mode}/p{self.prompt_tokens}/o{self.max_tokens}"
        if self.concurrency != 1:
            key += f"/x{self.concurrency}"
        if self.model:
            key += f"/m:{self.model}"
        if self.features != PLAIN:
            key += f"/{self.features.describe()}"
        return key


def capture_sizes(max_batch: int) -> list[int]:
    """vLLM's default CUDA-graph batch sizes up to max_batch: 1, 2, 4, then every 8."""
    out = [c for c in (1, 2, 4) if c <= max_batch]
    out += list(range(8, max_batch + 1, 8))
    if max_batch not in out:
        out.append(max_batch)
    return out


DEFAULT_MAX_MODEL_LEN = 4096  # the grid's top while a replica does not say its own


@dataclass(frozen=True, slots=True)
class WarmProfile:
    prompt_lengths: tuple[int, ...] = ()  # (): every power of two up to the largest prompt
    extra_prompt_lengths: tuple[int, ...] = ()  # finer buckets, added to the grid
    max_tokens: tuple[int, ...] = (16,)
    kinds: tuple[str, ...] = ("chat", "completions")
    streams: tuple[bool, ...] = (True, False)
    concurrency: tuple[int, ...] = ()  # (): capture_sizes(max_batch)
    max_batch: int = 16  # the largest concurrency burst of the default
    learned: bool = True  # also send the shapes users send (core.profile)
    learned_requests: int = 200  # learned requests in one round, at most
    adapters: bool = True  # warm the LoRA adapters a replica lists (at most its max_lora)
    tolerance: float = 0.15
    abs_tolerance: float = 0.005
    max_rounds: int = 10
    deadline: float = 300.0
    on_deadline: OnDeadline = OnDeadline.HOLD
    max_concurrent: int = 2  # replicas warmed at once by one gateway
    request_timeout: float = 120.0

    def limit(self, max_model_len: int | None) -> int:
        """The largest prompt the model accepts beside the largest max_tokens sent."""
        return max(1, (max_model_len or DEFAULT_MAX_MODEL_LEN) - max(self.max_tokens))

    def prompt_grid(self, max_model_len: int | None) -> list[int]:
        """The prompt sizes of the grid: every power of two below the largest accepted
        prompt, and that prompt (or the configured lengths, clipped), plus the extra ones."""
        limit = self.limit(max_model_len)
        if self.prompt_lengths:
            base = set(self.prompt_lengths)
        else:
            base = {1 << k for k in range(limit.bit_length()) if 1 << k < limit} | {limit}
        return sorted({min(n, limit) for n in (*base, *self.extra_prompt_lengths)})

    def batch_sizes(self) -> list[int]:
        return sorted(set(self.concurrency)) if self.concurrency else capture_sizes(
            self.max_batch)

    def shapes(self, max_model_len: int | None) -> list[WarmShape]:
        """The grid's shapes of one round, prompt lengths clipped to what the model accepts."""
        lengths = self.prompt_grid(max_model_len)
        out = [
            WarmShape(kind, stream, n, mt)
            for n in lengths
            for mt in self.max_tokens
            for kind in self.kinds
            for stream in self.streams
        ]
        small = WarmShape(self.kinds[0], False, lengths[0], self.max_tokens[0])
        for c in self.batch_sizes():
            if c > 1:
                out.append(WarmShape(small.kind, False, small.prompt_tokens, small.max_tokens, c))
        return out


def learned_shapes(top: Sequence[tuple[ShapeKey, Learned, float]], limit: int,
                   max_tokens: int, budget: int) -> list[WarmShape]:
    """One request per learned feature-shape and end of its size range (the smallest and
    the largest prompt seen), most used shapes first, at most `budget`."""
    out: list[WarmShape] = []
    seen: set[str] = set()
    for key, learned, _share in top:
        if learned.lo and learned.hi:
            sizes = sorted({learned.lo, learned.hi})
        else:  # only estimates (streams without usage): across the bucket, with a margin
            lo, hi = 2 ** (key.bucket / 4), 2 ** ((key.bucket + 1) / 4)
            sizes = sorted({max(1, math.ceil(lo * 0.85)), max(1, round((lo * hi) ** 0.5)),
                            max(1, math.floor(hi * 1.15))})
        for n in sizes:
            shape = WarmShape(key.kind, key.stream, min(n, limit), max_tokens, 1, key.model,
                              key.features)
            if shape.key in seen:
                continue
            seen.add(shape.key)
            out.append(shape)
            if len(out) >= budget:
                return out
    return out


def adapter_shapes(listed: Sequence[str], used: Mapping[str, float], already: set[str],
                   max_lora: int | None, kind: str, max_tokens: int) -> list[WarmShape]:
    """A small request for each adapter the replica lists and the learned shapes do not
    send already, most used first, so that the warmup loads at most max_lora adapters."""
    room = (max_lora if max_lora is not None else len(listed)) - len(already)
    order = sorted((a for a in listed if a not in already), key=lambda a: (-used.get(a, 0.0), a))
    return [WarmShape(kind, False, 16, max_tokens, 1, a) for a in order[:max(0, room)]]


def extra_shapes(p: WarmProfile, top: Sequence[tuple[ShapeKey, Learned, float]],
                 adapters: frozenset[str], max_model_len: int | None,
                 max_lora: int | None) -> list[WarmShape]:
    """Beyond the grid: the shapes users send to a replica's models (`top`, most used
    first), then the adapters it lists that those do not name; adapters at most as many as
    it holds at once (max_lora), most used first, so warming evicts none."""
    limit, mt = p.limit(max_model_len), min(p.max_tokens)
    used: dict[str, float] = {}
    for key, _, share in top:
        used[key.model] = used.get(key.model, 0.0) + share
    ordered = sorted(adapters, key=lambda a: (-used.get(a, 0.0), a))
    allowed = set(ordered[:max_lora] if max_lora is not None else ordered)
    top = [row for row in top if row[0].model not in adapters or row[0].model in allowed]
    extra = learned_shapes(top, limit, mt, p.learned_requests)
    if p.adapters and adapters:
        named = {s.model for s in extra if s.model in adapters}
        extra += adapter_shapes(ordered, used, named, max_lora, p.kinds[0], mt)
    return extra


class Convergence:
    """Feeds rounds of latencies, says when every shape has settled."""

    def __init__(self, profile: WarmProfile, reference: Mapping[str, float] | None) -> None:
        self.p = profile
        self.reference = dict(reference or {})
        self.rounds: list[dict[str, float]] = []

    def settled(self, key: str, cur: float) -> bool:
        tol, abs_tol = self.p.tolerance, self.p.abs_tolerance
        ref = self.reference.get(key)
        if ref is not None and cur <= ref * (1.0 + tol) + abs_tol:
            return True
        if len(self.rounds) >= 2:
            prev = self.rounds[-2].get(key)
            if prev is not None and prev - cur <= max(tol * prev, abs_tol):
                return True
        return False

    def add_round(self, latencies: Mapping[str, float]) -> bool:
        """Record one round; True when every shape in it has settled."""
        self.rounds.append(dict(latencies))
        return bool(latencies) and all(self.settled(k, v) for k, v in latencies.items())

    def unsettled(self) -> list[str]:
        if not self.rounds:
            return []
        return [k for k, v in self.rounds[-1].items() if not self.settled(k, v)]

    @property
    def last(self) -> dict[str, float]:
        return self.rounds[-1] if self.rounds else {}
