"""Request shapes: what an engine may be cold for, one definition shared by the ramp's
latency comparison, the traffic profile, the warmup and the simulator.

An engine is cold wherever it compiles, captures or loads something on first use: kernels
per prompt size (and batch size), a grammar per structured-output spec, a LoRA adapter, the
sampler paths for logprobs and n > 1, tool parsing, a multimodal encoder. A shape names all
of that for one request:

- kind (chat or completions), stream or not, the model or adapter name;
- the prompt size in tokens: `coarse` buckets (powers of two) where latencies are compared,
  `fine` buckets (quarter octaves, 2 ** (k / 4)) where the profile remembers sizes;
- the max_tokens bucket (powers of two);
- Features: the structured-output spec and the tools (by the id of their canonical JSON,
  the specs themselves kept apart: core.profile.TrafficProfile.specs), logprobs, n, media parts.

On the request path the prompt size is estimated from the body's bytes with a bytes-per-
token ratio per model (TokenRatios), calibrated with the replica's own tokenizer
(POST /tokenize) off the request path; the replica's answer (usage.prompt_tokens) gives the
exact count afterwards, which is what the profile keeps.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

DEFAULT_BYTES_PER_TOKEN = 4.0  # English text in a BPE vocabulary, until calibrated
JSON_OVERHEAD = 64  # bytes of a request body that are not prompt (keys, model, options)


def coarse(tokens: int) -> int:
    """The power-of-two bucket of a token count: 0 for 0, k for 2**(k-1) <= n < 2**k."""
    return tokens.bit_length()


def _fine(tokens: int) -> int:
    return int(4.0 * math.log2(tokens)) if tokens > 0 else -1


_FINE = tuple(_fine(n) for n in range(1 << 15))  # the request path's sizes, looked up


def fine(tokens: int) -> int:
    """The quarter-octave bucket of a token count (buckets 19 % wide)."""
    return _FINE[tokens] if 0 <= tokens < 32768 else _fine(tokens)


def latency_key(kind: str, stream: bool, prompt_tokens: int, max_tokens: int) -> int:
    """One small int per (kind, stream, coarse prompt bucket, max_tokens bucket): requests
    are compared for latency only with requests of the same key."""
    return ((coarse(prompt_tokens) << 9) | (max_tokens.bit_length() << 2)
            | (kind == "chat") << 1 | stream)


class TokenRatios:
    """Bytes of request body per prompt token, per model: first from the replica's
    tokenizer on sample text (/tokenize), then from what users send, as the replicas count
    it (usage.prompt_tokens of their answers), so estimates follow the fleet's own text."""

    __slots__ = ("ratios",)

    ALPHA = 0.05

    def __init__(self) -> None:
        self.ratios: dict[str, float] = {}

    def set(self, model: str, text_bytes: int, tokens: int) -> None:
        if text_bytes > 0 and tokens > 0 and model not in self.ratios:
            self.ratios[model] = text_bytes / tokens

    def learn(self, model: str, body_bytes: int, tokens: int) -> None:
        """A user request of body_bytes whose prompt the replica counted as tokens."""
        if tokens <= 0 or body_bytes <= JSON_OVERHEAD:
            return
        r = (body_bytes - JSON_OVERHEAD) / tokens
        old = self.ratios.get(model)
        self.ratios[model] = r if old is None else old + self.ALPHA * (r - old)

    def estimate(self, model: str, body_bytes: int) -> int:
        """Prompt tokens of a request body of body_bytes, roughly (never below 1)."""
        ratio = self.ratios.get(model, DEFAULT_BYTES_PER_TOKEN)
        return max(1, int((body_bytes - JSON_OVERHEAD) / ratio))


class Features(NamedTuple):
    """What beyond its size a request makes an engine do on first use."""

    schema: str = ""  # id of the structured-output spec (response_format / guided_*)
    tools: str = ""  # id of the tools and tool_choice
    logprobs: int = 0  # 0: none; else 1 + top_logprobs (or completions' logprobs N)
    n: int = 1
    media: str = ""  # "image", "audio", "video", joined by "+" when several

    def describe(self) -> str:
        parts = []
        if self.schema:
            parts.append(f"schema:{self.schema}")
        if self.tools:
            parts.append(f"tools:{self.tools}")
        if self.logprobs:
            parts.append(f"logprobs:{self.logprobs - 1}")
        if self.n > 1:
            parts.append(f"n:{self.n}")
        if self.media:
            parts.append(f"media:{self.media}")
        return ",".join(parts) or "plain"


PLAIN = Features()


class ShapeKey(NamedTuple):
    """A feature-shape: what the profile counts and the warmup sends one request of.
    (max_tokens is not in it: decoding runs per batch, not per request length.)"""

    model: str
    kind: str  # "chat" or "completions"
    stream: bool
    bucket: int  # fine(prompt tokens)
    features: Features

    def describe(self) -> str:
        mode = "stream" if self.stream else "json"
        lo = math.ceil(2 ** (self.bucket / 4)) if self.bucket >= 0 else 0
        return f"{self.model} {self.kind}/{mode} {lo}+ prompt tokens {self.features.describe()}"


def spec_id(spec: Any) -> tuple[str, str]:
    """A short id of a JSON value (a schema, a tool list), the same whatever the order of
    its keys, and the JSON as sent: an engine keys a compiled grammar on the text it was
    given, so a warmup must send the spec in the users' own order."""
    canon = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    sent = json.dumps(spec, separators=(",", ":"))
    return hashlib.blake2b(canon.encode(), digest_size=6).hexdigest(), sent


STRUCTURED = ("response_format", "guided_json", "guided_regex", "guided_choice",
              "guided_grammar", "structured_outputs")
MEDIA = {"image_url": "image", "input_image": "image", "image": "image",
         "input_audio": "audio", "audio_url": "audio", "video_url": "video"}


FEATURE_KEYS = frozenset((*STRUCTURED, "tools", "logprobs", "top_logprobs", "prompt_logprobs",
                          "n"))


def _media(messages: list[Any]) -> str:
    kinds = set()
    for m in messages:
        content = m.get("content") if type(m) is dict else None
        if type(content) is list:
            for part in content:
                if type(part) is dict:
                    kind = MEDIA.get(part.get("type", ""))
                    if kind:
                        kinds.add(kind)
    return "+".join(sorted(kinds))


def features_of(obj: dict[str, Any], keep: Callable[[str, str], None] | None = None
                ) -> tuple[Features, int]:
    """The features of a request body, and how many of its bytes are specs (structured
    output, tools) rather than prompt. keep, when given, is handed (id, JSON) of each
    structured-output spec and tool list seen (the profile keeps them, if allowed)."""
    messages = obj.get("messages")
    if FEATURE_KEYS.isdisjoint(obj):  # the common case: no feature key at all
        if type(messages) is not list:
            return PLAIN, 0
        media = _media(messages)
        return (Features(media=media), 0) if media else (PLAIN, 0)
    schema = tools = ""
    spec_bytes = 0
    structured = {k: obj[k] for k in STRUCTURED if obj.get(k) is not None}
    rf = structured.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "text":
        del structured["response_format"]  # plain text: no grammar
    if structured:
        schema, sent = spec_id(structured)
        spec_bytes += len(sent)
        if keep is not None:
            keep(schema, sent)
    tl = obj.get("tools")
    if tl:
        spec = {"tools": tl, "tool_choice": obj.get("tool_choice")}
        tools, sent = spec_id(spec)
        spec_bytes += len(sent)
        if keep is not None:
            keep(tools, sent)
    lp = obj.get("logprobs")
    top = obj.get("top_logprobs")
    logprobs = 0
    if lp is True or (type(lp) is int and lp >= 0):
        logprobs = 1 + (top if type(top) is int and top > 0 else (lp if type(lp) is int else 0))
    elif obj.get("prompt_logprobs") is not None:
        logprobs = 1
    n = obj.get("n")
    n = n if type(n) is int and n > 1 else 1
    media = _media(messages) if type(messages) is list else ""
    if not (schema or tools or logprobs or n > 1 or media):
        return PLAIN, spec_bytes
    return Features(schema, tools, logprobs, n, media), spec_bytes
