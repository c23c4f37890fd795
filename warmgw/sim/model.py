"""Pure model of a simulated vLLM replica: config, token counting, latency, cold start, queue.

Nothing here touches the network, the clock or global randomness: the server passes in a
seeded ``random.Random`` and measures time itself.

Token counting (deterministic and cheap, no tokenizer):
  * a text's token count is its number of whitespace-separated words (``len(s.split())``);
  * completions: ``prompt`` may be a string, a list of strings (counts are summed), a list
    of token ids (one token per id) or a list of such lists;
  * chat: the words of every message's text content, plus 8 tokens per conversation for
    the chat template (closer to real vLLM 0.32 than a per-message cost).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import NamedTuple

CHAT_TEMPLATE_TOKENS = 8  # per conversation


@dataclass(frozen=True)
class SimConfig:
    """Behaviour of one simulated replica. Times are in seconds."""

    model: str = "tiny"
    max_model_len: int = 4096
    load_time: float = 0.0
    ttft_base: float = 0.020
    ttft_per_prompt_token: float = 0.00002
    itl: float = 0.005
    max_running: int = 16
    default_max_tokens: int = 16
    cold_shape_penalty: float = 0.0
    cold_batch_penalty: float = 0.0
    prompt_buckets: tuple[int, ...] = (16, 256, 1024, 4096)
    jitter: float = 0.0
    seed: int = 0
    # Like real vLLM: the port refuses connections while loading (instead of /health 503).
    refuse_while_loading: bool = False
    embedding_dim: int = 8

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and its value."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                _bad(f.name, value, f"must be a number ({f.type})")
            if f.type == "int" and not isinstance(value, int):
                _bad(f.name, value, "must be an integer")
        if not isinstance(self.model, str) or not self.model:
            _bad("model", self.model, "must be a non-empty string")
        for name in ("max_model_len", "max_running", "default_max_tokens", "embedding_dim"):
            if getattr(self, name) < 1:
                _bad(name, getattr(self, name), "must be >= 1")
        for name in (
            "load_time",
            "ttft_base",
            "ttft_per_prompt_token",
            "itl",
            "cold_shape_penalty",
            "cold_batch_penalty",
        ):
            if not getattr(self, name) >= 0:  # also rejects NaN
                _bad(name, getattr(self, name), "must be >= 0")
        if not 0 <= self.jitter < 1:
            _bad("jitter", self.jitter, "must be in [0, 1)")
        b = self.prompt_buckets
        if (
            not isinstance(b, tuple)
            or not b
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in b)
            or any(x >= y for x, y in itertools.pairwise(b))
        ):
            _bad("prompt_buckets", b, "must be a non-empty strictly increasing tuple of ints >= 1")

    @property
    def batch_buckets(self) -> tuple[int, ...]:
        """Powers of two below max_running, then max_running itself: 1, 2, 4, ..., max."""
        out: list[int] = []
        size = 1
        while size < self.max_running:
            out.append(size)
            size *= 2
        out.append(self.max_running)
        return tuple(out)


def _bad(name: str, value: object, why: str) -> None:
    raise ValueError(f"SimConfig.{name} {why}, got {value!r}")


# ---------------------------------------------------------------- token counting


def count_text_tokens(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


def completion_prompt_tokens(prompt: object) -> int:
    """Tokens of a completions ``prompt``; raises ValueError on an unsupported shape."""
    if isinstance(prompt, str):
        return count_text_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return sum(count_text_tokens(p) for p in prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return len(prompt)
        if all(isinstance(p, list) for p in prompt):
            return sum(completion_prompt_tokens(p) for p in prompt)
    raise ValueError("prompt must be a string, a list of strings or a list of token ids")


def chat_prompt_tokens(messages: object) -> int:
    """Tokens of chat ``messages``; raises ValueError on an unsupported shape."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    total = 0
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError("each message must be an object")
        content = message.get("content")
        if isinstance(content, str):
            total += count_text_tokens(content)
        elif isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += count_text_tokens(part["text"])
        elif content is not None:
            raise ValueError("message content must be a string or a list of parts")
    return total + CHAT_TEMPLATE_TOKENS


_SYLLABLES = ("to", "no", "so", "mo", "lu", "ka", "ri", "te", "va", "pe", "zi", "don")


def generated_token(index: int, salt: int = 0) -> str:
    """The index-th generated token: a deterministic pseudo-word piece such as " tonoso"."""
    h = (index * 2654435761 + salt * 40503) & 0xFFFFFFFF
    word = "".join(_SYLLABLES[(h >> s) % len(_SYLLABLES)] for s in (0, 5, 11)[: 1 + h % 3])
    return (" " if h & 8 else "") + word


def generated_text(n_tokens: int, salt: int = 0) -> str:
    return "".join(generated_token(i, salt) for i in range(n_tokens))


# ---------------------------------------------------------------- cold start and latency


class ColdStartModel:
    """Which prompt-length and batch-size buckets have been compiled ("warm") so far."""

    def __init__(self, config: SimConfig) -> None:
        self._config = config
        self._prompt_warm: set[int] = set()
        self._batch_warm: set[int] = set()

    def prompt_bucket(self, prompt_tokens: int) -> int:
        for boundary in self._config.prompt_buckets:
            if prompt_tokens <= boundary:
                return boundary
        return self._config.prompt_buckets[-1]

    def batch_bucket(self, running: int) -> int:
        for size in self._config.batch_buckets:
            if running <= size:
                return size
        return self._config.batch_buckets[-1]

    def is_warm(self, prompt_tokens: int, running: int) -> bool:
        return (
            self.prompt_bucket(prompt_tokens) in self._prompt_warm
            and self.batch_bucket(running) in self._batch_warm
        )

    def admit(self, prompt_tokens: int, running: int) -> float:
        """Mark both buckets compiled; return the cold penalty this request pays (often 0)."""
        penalty = 0.0
        pb = self.prompt_bucket(prompt_tokens)
        if pb not in self._prompt_warm:
            self._prompt_warm.add(pb)
            penalty += self._config.cold_shape_penalty
        bb = self.batch_bucket(running)
        if bb not in self._batch_warm:
            self._batch_warm.add(bb)
            penalty += self._config.cold_batch_penalty
        return penalty

    @property
    def warm_prompt_buckets(self) -> frozenset[int]:
        return frozenset(self._prompt_warm)

    @property
    def warm_batch_buckets(self) -> frozenset[int]:
        return frozenset(self._batch_warm)

    def reset(self) -> None:
        """Cold again, as after a process restart."""
        self._prompt_warm.clear()
        self._batch_warm.clear()


class Timing(NamedTuple):
    ttft: float  # seconds from admission to the first token, cold penalty included
    per_token: float  # seconds between later tokens
    paid_cold: bool  # True when a cold penalty > 0 was added to ttft


class LatencyModel:
    """Turns (prompt tokens, max output tokens, running count) into a Timing."""

    def __init__(self, config: SimConfig, cold: ColdStartModel, rng: random.Random) -> None:
        self._config = config
        self._cold = cold
        self._rng = rng

    def plan(self, prompt_tokens: int, max_tokens: int, running: int) -> Timing:
        """Called once per request at admission; ``running`` includes the request itself.

        ``max_tokens`` does not change the per-token cost; it is part of the signature so a
        richer model (e.g. decode slowing with KV usage) can use it.
        """
        c = self._config
        penalty = self._cold.admit(prompt_tokens, running)
        factor = 1.0 + self._rng.uniform(-c.jitter, c.jitter) if c.jitter else 1.0
        ttft = (c.ttft_base + c.ttft_per_prompt_token * prompt_tokens) * factor + penalty
        return Timing(ttft=ttft, per_token=c.itl * factor, paid_cold=penalty > 0)


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

    def running_ids(self) -> Sequence[int]:
        return tuple(self._running)
