"""State of one simulated vLLM process lifetime, and its request log records.

A restart replaces the whole ``SimProcess``: queue, cold-start state and metrics start
afresh, and requests still finishing on the old one only touch the old one.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from warmgw.sim.metrics import SimMetrics
from warmgw.sim.model import ColdStartModel, LatencyModel, Scheduler, SimConfig
from warmgw.sim.prefix import PrefixCache


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
    model: str = ""  # the model named (base model or LoRA adapter); "" if unparsed
    features: tuple[str, ...] = ()  # Features.tags(), e.g. ("adapter:sql-lora", "n:2")
    cold: tuple[str, ...] = ()  # first uses paid for, e.g. ("prompt_bucket:48", "logprobs")
    request_id: str = ""  # the X-Request-Id header, if any
    cached_tokens: int = -1  # prompt tokens found in the prefix cache; -1: cache off
    # the most of the prompt's leading tokens that another replica of this simulator
    # process held in full blocks when this one was scheduled; -1: cache off or no other
    # replica (an instrument for benchmarks: "did the fleet have it cached elsewhere")
    fleet_cached_tokens: int = -1

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["features"] = list(self.features)
        out["cold"] = list(self.cold)
        return out


def cache_config(config: SimConfig) -> tuple[int, int, bool]:
    """(block_size, num_gpu_blocks, enable_prefix_caching) as vLLM reports them: with the
    prefix cache on, its blocks; else the KV blocks max_running full-length requests take."""
    bs = config.prefix_block_tokens
    if config.prefix_cache_blocks:
        return bs, config.prefix_cache_blocks, True
    return bs, -(-config.max_running * config.max_model_len // bs), False


class SimProcess:
    """Admission queue, cold-start model, latency model and metrics of one process start."""

    def __init__(
        self,
        config: SimConfig,
        rng: random.Random,
        start_wall: float,
        ready_at: float,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.start_wall = start_wall
        self.ready_at = ready_at  # replica clock time when loading ends
        self.scheduler = Scheduler(config.max_running)
        self.cold = ColdStartModel(config)
        self.latency = LatencyModel(config, self.cold, rng)
        self.prefix = PrefixCache(config.prefix_block_tokens, config.prefix_cache_blocks)
        self._ids = itertools.count()
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._kv_tokens: dict[int, int] = {}
        self._kv_total = 0
        self._adapter_of: dict[int, str] = {}  # slot -> LoRA adapter, for adapter requests
        self._running_adapters: Counter[str] = Counter()
        self._waiting_adapters: Counter[str] = Counter()
        self.metrics = SimMetrics(
            config.model,
            start_wall,
            running=lambda: self.scheduler.running,
            waiting=lambda: self.scheduler.waiting,
            kv_usage=self.kv_usage,
            max_loras=config.max_loras if config.lora_adapters else None,
            wall_clock=wall_clock or (lambda: start_wall),
            cache=cache_config(config),
        )

    def kv_usage(self) -> float:
        """Tokens reserved by running requests over max_running * max_model_len."""
        return self._kv_total / (self.config.max_running * self.config.max_model_len)

    def lora_state(self) -> tuple[list[str], list[str]]:
        """(running, waiting) LoRA adapter names, as vLLM's lora_requests_info labels."""
        return sorted(self._running_adapters), sorted(self._waiting_adapters)

    def _adapter_moved(
        self, adapter: str, source: Counter[str] | None, target: Counter[str] | None
    ) -> None:
        if source is not None:
            source[adapter] -= 1
            if source[adapter] <= 0:
                del source[adapter]
        if target is not None:
            target[adapter] += 1
        self.metrics.lora_update(*self.lora_state())

    async def admit(self, kv_tokens: int, adapter: str | None = None) -> tuple[int, int]:
        """Wait for a running slot (FIFO). Returns (slot id, running count incl. this one).

        The caller must ``release(slot)`` in a ``finally`` once this has been called; if the
        wait is cancelled the slot is released here.
        """
        slot = next(self._ids)
        admission = self.scheduler.submit(slot)
        if adapter is not None:
            self._adapter_of[slot] = adapter
            queue = self._running_adapters if admission is not None else self._waiting_adapters
            self._adapter_moved(adapter, None, queue)
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
        adapter = self._adapter_of.pop(slot, None)
        if adapter is not None:
            running = self.scheduler.is_running(slot)
            source = self._running_adapters if running else self._waiting_adapters
            self._adapter_moved(adapter, source, None)
        for admission in self.scheduler.release(slot):
            moved = self._adapter_of.get(admission.request_id)
            if moved is not None:
                self._adapter_moved(moved, self._waiting_adapters, self._running_adapters)
            fut = self._waiters.pop(admission.request_id)
            if fut.done():  # its waiter was cancelled meanwhile: give the slot back
                self.release(admission.request_id)
            else:
                fut.set_result(admission.running)
