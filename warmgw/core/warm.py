"""What a warmup sends and when it is done.

A round sends every shape of the profile once, one at a time (prompt lengths x max_tokens x
chat/completions x stream/not), then bursts of 2, 4, 8, ... concurrent requests so that
batch-size specific kernels and graphs get built too. A shape's latency is its time to
first byte for a stream, its whole duration otherwise, the slowest request for a burst.

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

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


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

    @property
    def key(self) -> str:
        mode = "stream" if self.stream else "json"
        base = f"{self.kind}/{mode}/p{self.prompt_tokens}/o{self.max_tokens}"
        return base if self.concurrency == 1 else f"{base}/x{self.concurrency}"


@dataclass(frozen=True, slots=True)
class WarmProfile:
    prompt_lengths: tuple[int, ...] = (16, 256, 1024, 4096)
    max_tokens: tuple[int, ...] = (16,)
    kinds: tuple[str, ...] = ("chat", "completions")
    streams: tuple[bool, ...] = (True, False)
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    tolerance: float = 0.15
    abs_tolerance: float = 0.005
    max_rounds: int = 10
    deadline: float = 300.0
    on_deadline: OnDeadline = OnDeadline.HOLD
    max_concurrent: int = 2  # replicas warmed at once by one gateway
    request_timeout: float = 120.0

    def shapes(self, max_model_len: int | None) -> list[WarmShape]:
        """The shapes of one round, prompt lengths clipped to what the model accepts."""
        limit = None
        if max_model_len is not None:
            limit = max(1, max_model_len - max(self.max_tokens) - 64)
        lengths = sorted({min(n, limit) if limit else n for n in self.prompt_lengths})
        out = [
            WarmShape(kind, stream, n, mt)
            for n in lengths
            for mt in self.max_tokens
            for kind in self.kinds
            for stream in self.streams
        ]
        small = WarmShape(self.kinds[0], False, lengths[0], self.max_tokens[0])
        for c in sorted(set(self.concurrency)):
            if c > 1:
                out.append(WarmShape(small.kind, False, small.prompt_tokens, small.max_tokens, c))
        return out


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
