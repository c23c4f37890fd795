"""SimConfig: the frozen, validated behaviour of one simulated replica.

Cold rules (first-use costs in seconds, paid once per simulated process, i.e. again after
a restart):

* ``cold_shape_penalty``: the first request in each prompt-length bucket. Buckets are
  ``prompt_buckets`` (explicit upper bounds), or, when ``prompt_bucket_factor`` > 1, a
  geometric grid from ``prompt_bucket_min`` up to ``max_model_len`` (1.5 from 8: 8, 12,
  18, 27, 41, ...).
* ``cold_batch_penalty``: the first request admitted at each batch-size bucket:
  ``batch_sizes`` when given, else powers of two below ``max_running``, then max_running.
* ``cold_adapter_penalty``: loading a LoRA adapter into one of ``max_loras`` slots (least
  recently used eviction: an evicted adapter pays again on its next use).
* ``cold_grammar_penalty``: each distinct structured-output spec.
* ``cold_tools_penalty``: each distinct tools list (with its tool_choice).
* ``cold_logprobs_penalty`` / ``cold_n_penalty``: the first request asking for logprobs /
  for n > 1 choices.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields

DEFAULT_PROMPT_BUCKETS = (16, 256, 1024, 4096)
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs

PENALTIES = (
    "cold_shape_penalty",
    "cold_batch_penalty",
    "cold_adapter_penalty",
    "cold_grammar_penalty",
    "cold_tools_penalty",
    "cold_logprobs_penalty",
    "cold_n_penalty",
)


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
    prompt_buckets: tuple[int, ...] = DEFAULT_PROMPT_BUCKETS
    jitter: float = 0.0
    seed: int = 0
    # Like real vLLM: the port refuses connections while loading (instead of /health 503).
    refuse_while_loading: bool = False
    embedding_dim: int = 8
    # Tokenizer rule: 0 = one token per whitespace-separated word; N > 0 = a word of L
    # characters is ceil(L / N) tokens.
    chars_per_token: int = 0
    # > 1: geometric prompt buckets from prompt_bucket_min (replaces prompt_buckets).
    prompt_bucket_factor: float = 0.0
    prompt_bucket_min: int = 8
    # Explicit batch-size buckets; () = powers of two up to max_running.
    batch_sizes: tuple[int, ...] = ()
    # LoRA adapters as vLLM's --lora-modules: "name" or "name=path".
    lora_adapters: tuple[str, ...] = ()
    max_loras: int = 1
    cold_adapter_penalty: float = 0.0
    cold_grammar_penalty: float = 0.0
    cold_tools_penalty: float = 0.0
    cold_logprobs_penalty: float = 0.0
    cold_n_penalty: float = 0.0
    # Automatic prefix caching (warmgw.sim.prefix): blocks of prefix_block_tokens tokens,
    # prefix_cache_blocks of them per process (0: off). The uncached part of a prompt
    # alone costs ttft_per_prompt_token.
    prefix_block_tokens: int = 16
    prefix_cache_blocks: int = 0

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
        for name in (
            "max_model_len",
            "max_running",
            "default_max_tokens",
            "embedding_dim",
            "prompt_bucket_min",
            "max_loras",
            "prefix_block_tokens",
        ):
            if getattr(self, name) < 1:
                _bad(name, getattr(self, name), "must be >= 1")
        for name in ("load_time", "ttft_base", "ttft_per_prompt_token", "itl", *PENALTIES):
            if not getattr(self, name) >= 0:  # also rejects NaN
                _bad(name, getattr(self, name), "must be >= 0")
        if not 0 <= self.jitter < 1:
            _bad("jitter", self.jitter, "must be in [0, 1)")
        if self.prefix_cache_blocks < 0:
            _bad("prefix_cache_blocks", self.prefix_cache_blocks, "must be >= 0")
        if self.chars_per_token < 0:
            _bad("chars_per_token", self.chars_per_token, "must be >= 0")
        factor = self.prompt_bucket_factor
        if not (factor == 0 or 1 < factor <= 16):
            _bad("prompt_bucket_factor", factor, "must be 0 (use prompt_buckets) or in (1, 16]")
        _check_buckets("prompt_buckets", self.prompt_buckets, allow_empty=False)
        _check_buckets("batch_sizes", self.batch_sizes, allow_empty=True)
        self._validate_adapters()

    def _validate_adapters(self) -> None:
        a = self.lora_adapters
        if not isinstance(a, tuple) or any(not isinstance(x, str) for x in a):
            _bad("lora_adapters", a, "must be a tuple of strings")
        names = [adapter_name(x) for x in a]
        if any(not n or n == self.model or any(c.isspace() for c in n) for n in names) or len(
            set(names)
        ) != len(names):
            _bad(
                "lora_adapters",
                a,
                "needs distinct non-empty names without spaces, other than the model name",
            )

    # ------------------------------------------------------------ derived values

    @property
    def batch_buckets(self) -> tuple[int, ...]:
        """``batch_sizes`` if given; else powers of two below max_running, then
        max_running itself: 1, 2, 4, ..., max."""
        if self.batch_sizes:
            return self.batch_sizes
        out: list[int] = []
        size = 1
        while size < self.max_running:
            out.append(size)
            size *= 2
        out.append(self.max_running)
        return tuple(out)

    @property
    def prompt_grid(self) -> tuple[int, ...]:
        """The prompt-length bucket upper bounds in force (a prompt longer than the last
        one falls in the last one)."""
        factor = self.prompt_bucket_factor
        if not factor:
            return self.prompt_buckets
        out: list[int] = []
        size = self.prompt_bucket_min
        while size < self.max_model_len:
            out.append(size)
            size = max(size + 1, math.ceil(size * factor))
        out.append(self.max_model_len)
        return tuple(out)

    @property
    def adapters(self) -> dict[str, str]:
        """LoRA adapter name -> path (``/adapters/<name>`` when none was given)."""
        out: dict[str, str] = {}
        for spec in self.lora_adapters:
            name, _, path = spec.partition("=")
            out[name.strip()] = path.strip() or f"/adapters/{name.strip()}"
        return out


def adapter_name(spec: str) -> str:
    return spec.partition("=")[0].strip()


def _check_buckets(name: str, b: object, allow_empty: bool) -> None:
    if (
        not isinstance(b, tuple)
        or (not b and not allow_empty)
        or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in b)
        or any(x >= y for x, y in itertools.pairwise(b))
    ):
        what = "a" if not allow_empty else "() or a"
        _bad(name, b, f"must be {what} non-empty strictly increasing tuple of ints >= 1")


def _bad(name: str, value: object, why: str) -> None:
    raise ValueError(f"SimConfig.{name} {why}, got {value!r}")
