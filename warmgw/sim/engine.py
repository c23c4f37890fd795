"""State of one simulated vLLM process lifetime, and its request log records.

A restart replaces the whole ``SimProcess``: queue, cold-start state and metrics start
afresh, and requests still finishing on the old one only touch the old one.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import asdict, dataclass
from typing import Any

from warmgw.sim.metrics import SimMetrics
from warmgw.sim.model import ColdStartModel, LatencyModel, Scheduler, SimConfig


@dataclass
class SimStats:
    """Counters kept across restarts. A *cold hit* is a request that paid a cold penalty."""

    user_requests: int = 0
    warmup_requests: int = 0
    user_cold_hits: int = 0
    warmup_cold_hits: int = 0
    injected_errors: int = 0
    restarts: int = 0

    def as_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class RequestRecord:
    """One inference request, appended to ``SimReplica.log`` when it ends."""

    start: float  # replica clock (monotonic) at arrival
    path: str
    warmup: bool
    paid_cold: bool
    prompt_tokens: int
    ttft: float | None  # seconds from arrival to the first token, None if none was produced
    duration: float
    status: int  # HTTP status sent; 0 when the connection was dropped or the client left
    outcome: str  # "ok", "error", "disconnected", "dropped"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class SimProcess:
    """Admission queue, cold-start model, latency model and metrics of one process start."""

    def __init__(
        self, config: SimConfig, rng: random.Random, start_wall: float, ready_at: float
    ) -> None:
        self.config = config
        self.start_wall = start_wall
        self.ready_at = ready_at  # replica clock time when loading ends
        self.scheduler = Scheduler(config.max_running)
        self.cold = ColdStartModel(config)
        self.latency = LatencyModel(config, self.cold, rng)
        self._ids = itertools.count()
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._kv_tokens: dict[int, int] = {}
        self._kv_total = 0
        self.metrics = SimMetrics(
            config.model,
            start_wall,
            running=lambda: self.scheduler.running,
            waiting=lambda: self.scheduler.waiting,
            kv_usage=self.kv_usage,
        )

    def kv_usage(self) -> float:
        """Tokens reserved by running requests over max_running * max_model_len."""
        return self._kv_total / (self.config.max_running * self.config.max_model_len)

    async def admit(self, kv_tokens: int) -> tuple[int, int]:
        """Wait for a running slot (FIFO). Returns (slot id, running count incl. this one).

        The caller must ``release(slot)`` in a ``finally`` once this has been called; if the
        wait is cancelled the slot is released here.
        """
        slot = next(self._ids)
        admission = self.scheduler.submit(slot)
        if admission is not None:
            running = admission.running
        else:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._waiters[slot] = fut
            try:
                running = await fut
            except BaseException:
                self.release(slot)
                raise
        self._kv_tokens[slot] = kv_tokens
        self._kv_total += kv_tokens
        return slot, running

    def release(self, slot: int) -> None:
        """Finish (or abandon) a slot; unknown and already released slots are ignored."""
        self._waiters.pop(slot, None)
        self._kv_total -= self._kv_tokens.pop(slot, 0)
        for admission in self.scheduler.release(slot):
            fut = self._waiters.pop(admission.request_id)
            if fut.done():  # its waiter was cancelled meanwhile: give the slot back
                self.release(admission.request_id)
            else:
                fut.set_result(admission.running)
