"""Pure model of a simulated vLLM replica: latency and the FIFO queue.

Nothing here touches the network, the clock or global randomness: the server passes in a
seeded ``random.Random`` and measures time itself. The config lives in
``warmgw.sim.config``, token counting in ``warmgw.sim.tokens`` and cold start in
``warmgw.sim.cold``; they are re-exported here for existing importers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from warmgw.sim.cold import ColdCharge, ColdStartModel
from warmgw.sim.config import SimConfig
from warmgw.sim.features import NO_FEATURES, Features
from warmgw.sim.tokens import (
    CHAT_TEMPLATE_TOKENS,
    chat_prompt_tokens,
    completion_prompt_tokens,
    count_text_tokens,
    generated_text,
    generated_token,
)

__all__ = [
    "CHAT_TEMPLATE_TOKENS",
    "Admission",
    "ColdCharge",
    "ColdStartModel",
    "LatencyModel",
    "Scheduler",
    "SimConfig",
    "Timing",
    "chat_prompt_tokens",
    "completion_prompt_tokens",
    "count_text_tokens",
    "generated_text",
    "generated_token",
]


# ---------------------------------------------------------------- latency


class Timing(NamedTuple):
    ttft: float  # seconds from admission to the first token, cold penalty included
    per_token: float  # seconds between later tokens
    paid_cold: bool  # True when a cold penalty > 0 was added to ttft
    cold: tuple[str, ...] = ()  # the first uses paid for (ColdCharge.reasons)


class LatencyModel:
    """Turns (prompt tokens, max output tokens, running count) into a Timing."""

    def __init__(self, config: SimConfig, cold: ColdStartModel, rng: random.Random) -> None:
        self._config = config
        self._cold = cold
        self._rng = rng

    def plan(
        self, prompt_tokens: int, max_tokens: int, running: int, features: Features = NO_FEATURES,
        cached: int = 0,
    ) -> Timing:
        """Called once per request at admission; ``running`` includes the request itself;
        ``cached``: the prompt's tokens found in the prefix cache (not computed again).

        ``max_tokens`` does not change the per-token cost; it is part of the signature so a
        richer model (e.g. decode slowing with KV usage) can use it.
        """
        c = self._config
        penalty, reasons = self._cold.charge(prompt_tokens, running, features)
        factor = 1.0 + self._rng.uniform(-c.jitter, c.jitter) if c.jitter else 1.0
        ttft = (c.ttft_base + c.ttft_per_prompt_token * (prompt_tokens - cached)) * factor + penalty
        return Timing(ttft=ttft, per_token=c.itl * factor, paid_cold=penalty > 0, cold=reasons)


# ---------------------------------------------------------------- FIFO admission


class Admission(NamedTuple):
    request_id: int
    running: int  # running count right after this request was admitted (includes it)


@dataclass
class Scheduler:
    """At most ``max_running`` requests run; the rest wait in FIFO order."""

    max_running: int
    _running: set[int] = field(default_factory=set)
    _waiting: dict[int, None] = field(default_factory=dict)  # insertion-ordered

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, request_id: int) -> Admission | None:
        """Admit now (returns the Admission) or queue (returns None)."""
        if request_id in self._running or request_id in self._waiting:
            raise ValueError(f"request {request_id} already submitted")
        if not self._waiting and len(self._running) < self.max_running:
            self._running.add(request_id)
            return Admission(request_id, len(self._running))
        self._waiting[request_id] = None
        return None

    def release(self, request_id: int) -> list[Admission]:
        """Forget a finished, failed or cancelled request (running or waiting; unknown ids
        are ignored) and return the waiting requests admitted in its place, in FIFO order."""
        self._running.discard(request_id)
        self._waiting.pop(request_id, None)
        admitted: list[Admission] = []
        while self._waiting and len(self._running) < self.max_running:
            rid = next(iter(self._waiting))
            del self._waiting[rid]
            self._running.add(rid)
            admitted.append(Admission(rid, len(self._running)))
        return admitted

    def is_running(self, request_id: int) -> bool:
        return request_id in self._running

    def running_ids(self) -> Sequence[int]:
        return tuple(self._running)
