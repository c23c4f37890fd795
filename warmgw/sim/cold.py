"""Cold start: what a simulated process has compiled or loaded so far, and what a request
pays for what it is the first to use. See ``warmgw.sim.config`` for the rules.

A request pays the sum of the penalties of every first use it hits; ``ColdCharge.reasons``
names them ("prompt_bucket:48", "batch_bucket:4", "adapter:sql-lora", "grammar:<hash>",
"tools:<hash>", "logprobs", "n"). A rule whose penalty is 0 still marks its state warm but
is not a reason: reasons are what was paid.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from typing import Any, NamedTuple

from warmgw.sim.config import DEFAULT_PROMPT_BUCKETS, PENALTIES, SimConfig
from warmgw.sim.features import NO_FEATURES, Features


class ColdCharge(NamedTuple):
    penalty: float  # seconds added to the time to first token
    reasons: tuple[str, ...]  # the first uses paid for


class LoraSlots:
    """``capacity`` adapter slots with least-recently-used eviction."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lru: OrderedDict[str, None] = OrderedDict()

    def use(self, name: str) -> bool:
        """Mark ``name`` used now; True when it had to be loaded (it was not resident)."""
        if name in self._lru:
            self._lru.move_to_end(name)
            return False
        if len(self._lru) >= self._capacity:
            self._lru.popitem(last=False)
        self._lru[name] = None
        return True

    @property
    def resident(self) -> tuple[str, ...]:
        """Loaded adapters, least recently used first."""
        return tuple(self._lru)


class ColdStartModel:
    """Which buckets and features have been compiled or loaded ("warm") so far."""

    def __init__(self, config: SimConfig) -> None:
        self._config = config
        self._prompt_grid = config.prompt_grid
        self._batch_grid = config.batch_buckets
        self._prompt_warm: set[int] = set()
        self._batch_warm: set[int] = set()
        self._features_warm: set[str] = set()  # "grammar:<hash>", "tools:<hash>", "logprobs", "n"
        self._lora = LoraSlots(config.max_loras)

    def prompt_bucket(self, prompt_tokens: int) -> int:
        i = bisect.bisect_left(self._prompt_grid, prompt_tokens)
        return self._prompt_grid[min(i, len(self._prompt_grid) - 1)]

    def batch_bucket(self, running: int) -> int:
        i = bisect.bisect_left(self._batch_grid, running)
        return self._batch_grid[min(i, len(self._batch_grid) - 1)]

    def is_warm(self, prompt_tokens: int, running: int) -> bool:
        return (
            self.prompt_bucket(prompt_tokens) in self._prompt_warm
            and self.batch_bucket(running) in self._batch_warm
        )

    def charge(
        self, prompt_tokens: int, running: int, features: Features = NO_FEATURES
    ) -> ColdCharge:
        """Mark everything this request uses warm; return what it pays (often nothing)."""
        c = self._config
        firsts: list[tuple[float, str]] = []  # (penalty, reason) of each first use
        pb = self.prompt_bucket(prompt_tokens)
        if pb not in self._prompt_warm:
            self._prompt_warm.add(pb)
            firsts.append((c.cold_shape_penalty, f"prompt_bucket:{pb}"))
        bb = self.batch_bucket(running)
        if bb not in self._batch_warm:
            self._batch_warm.add(bb)
            firsts.append((c.cold_batch_penalty, f"batch_bucket:{bb}"))
        if features is not NO_FEATURES:
            self._charge_features(features, firsts)
        paid = [(p, r) for p, r in firsts if p > 0]
        return ColdCharge(sum(p for p, _ in paid), tuple(r for _, r in paid))

    def _charge_features(self, f: Features, firsts: list[tuple[float, str]]) -> None:
        c = self._config
        if f.adapter is not None and self._lora.use(f.adapter):
            firsts.append((c.cold_adapter_penalty, f"adapter:{f.adapter}"))
        uses = (
            (f.grammar is not None, f"grammar:{f.grammar}", c.cold_grammar_penalty),
            (f.tools is not None, f"tools:{f.tools}", c.cold_tools_penalty),
            (f.logprobs is not None, "logprobs", c.cold_logprobs_penalty),
            (f.n > 1, "n", c.cold_n_penalty),
        )
        for used, key, penalty in uses:
            if used and key not in self._features_warm:
                self._features_warm.add(key)
                firsts.append((penalty, key))

    def admit(self, prompt_tokens: int, running: int, features: Features = NO_FEATURES) -> float:
        """``charge`` that returns only the penalty."""
        return self.charge(prompt_tokens, running, features).penalty

    @property
    def warm_prompt_buckets(self) -> frozenset[int]:
        return frozenset(self._prompt_warm)

    @property
    def warm_batch_buckets(self) -> frozenset[int]:
        return frozenset(self._batch_warm)

    @property
    def warm_features(self) -> frozenset[str]:
        return frozenset(self._features_warm)

    @property
    def loaded_adapters(self) -> tuple[str, ...]:
        return self._lora.resident

    def reset(self) -> None:
        """Cold again, as after a process restart."""
        self._prompt_warm.clear()
        self._batch_warm.clear()
        self._features_warm.clear()
        self._lora = LoraSlots(self._config.max_loras)


# ---------------------------------------------------------------- presets

_PRESETS: dict[str, dict[str, Any]] = {
    # Today's grid: four prompt buckets (16, 256, 1024, 4096), power-of-two batch sizes.
    "grid": {
        "prompt_buckets": DEFAULT_PROMPT_BUCKETS,
        "prompt_bucket_factor": 0.0,
        "batch_sizes": (),
        "cold_shape_penalty": 0.5,
        "cold_batch_penalty": 0.25,
    },
    # Geometric prompt buckets, 1.5x from 8 tokens to max_model_len: 8, 12, 18, 27, ...
    "fine": {
        "prompt_bucket_factor": 1.5,
        "prompt_bucket_min": 8,
        "batch_sizes": (),
        "cold_shape_penalty": 0.5,
        "cold_batch_penalty": 0.25,
    },
}
_PRESETS["features"] = _PRESETS["fine"] | {
    "lora_adapters": ("sql-lora", "chat-lora"),
    "max_loras": 2,
    "cold_adapter_penalty": 1.0,
    "cold_grammar_penalty": 0.5,
    "cold_tools_penalty": 0.5,
    "cold_logprobs_penalty": 1.0,
    "cold_n_penalty": 0.25,
}
COLD_RULES = tuple(_PRESETS)


def cold_rules(name: str, scale: float = 1.0) -> dict[str, Any]:
    """SimConfig overrides of a named preset; every penalty is multiplied by ``scale``.

    * "grid": today's four prompt buckets and power-of-two batch sizes; shape 0.5 s,
      batch 0.25 s.
    * "fine": the same costs on geometric prompt buckets (1.5x from 8 tokens), finer than
      powers of two, so a warmup on a coarse grid misses buckets.
    * "features": "fine" plus two LoRA adapters ("sql-lora", "chat-lora", max_loras 2,
      1 s to load), 0.5 s per distinct grammar and per distinct tools list, 1 s for the
      first logprobs and 0.25 s for the first n > 1.

    Every penalty a preset does not set is 0, so presets can replace one another:
    ``SimConfig(**cold_rules("features", scale=0.1))``.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown cold rules {name!r}; choose from {', '.join(COLD_RULES)}")
    if not scale >= 0:
        raise ValueError(f"cold rules scale must be >= 0, got {scale!r}")
    out = {p: 0.0 for p in PENALTIES} | _PRESETS[name]
    for p in PENALTIES:
        out[p] = out[p] * scale
    return out
