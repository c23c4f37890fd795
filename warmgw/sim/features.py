"""The engine features a request uses that a real vLLM initialises lazily.

* adapter: the request's ``model`` names a LoRA adapter (loaded into a slot on first use);
* grammar: structured output (``response_format`` json_schema / json_object /
  structural_tag, vLLM's ``guided_json``/``guided_regex``/``guided_choice``/
  ``guided_grammar`` and ``structured_outputs``), keyed by a hash of its canonical JSON:
  each distinct spec is compiled once;
* tools: a non-empty ``tools`` list (chat), keyed by a hash of the canonical JSON of
  ``tools`` with ``tool_choice``;
* logprobs: completions ``logprobs: N``; chat ``logprobs: true`` (``top_logprobs: N``);
* n: more than one choice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from warmgw.sim.config import MAX_LOGPROBS

GUIDED_KEYS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


class BadField(ValueError):
    """A request field vLLM would reject with a 400."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Features:
    adapter: str | None = None
    grammar: str | None = None  # short hash of the canonical structured-output spec
    tools: str | None = None  # short hash of the canonical tools + tool_choice
    logprobs: int | None = None  # top alternatives asked per token; None = no logprobs
    n: int = 1

    def tags(self) -> tuple[str, ...]:
        """Compact form for request records, e.g. ("adapter:sql", "logprobs:2", "n:3")."""
        out = []
        if self.adapter is not None:
            out.append(f"adapter:{self.adapter}")
        if self.grammar is not None:
            out.append(f"grammar:{self.grammar}")
        if self.tools is not None:
            out.append(f"tools:{self.tools}")
        if self.logprobs is not None:
            out.append(f"logprobs:{self.logprobs}")
        if self.n > 1:
            out.append(f"n:{self.n}")
        return tuple(out)


NO_FEATURES = Features()


def canonical_hash(spec: object) -> str:
    """12 hex characters of the SHA-256 of the canonical JSON (sorted keys, compact)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_features(body: Mapping[str, Any], chat: bool, adapter: str | None) -> Features:
    """Features of a chat or completions body; raises BadField on a bad value."""
    return Features(
        adapter=adapter,
        grammar=_grammar(body),
        tools=_tools(body) if chat else None,
        logprobs=_chat_logprobs(body) if chat else _completion_logprobs(body),
        n=_n(body),
    )


def _grammar(body: Mapping[str, Any]) -> str | None:
    spec: dict[str, Any] = {}
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, Mapping) or not isinstance(rf.get("type"), str):
            raise BadField("response_format", "response_format must be an object with a type")
        if rf["type"] != "text":
            spec["response_format"] = rf
    for key in GUIDED_KEYS:
        if body.get(key) is not None:
            spec[key] = body[key]
    structured = body.get("structured_outputs")
    if structured is not None:
        spec["structured_outputs"] = structured
    return canonical_hash(spec) if spec else None


def _tools(body: Mapping[str, Any]) -> str | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise BadField("tools", "tools: Input should be a valid list")
    if not tools:
        return None
    return canonical_hash({"tools": tools, "tool_choice": body.get("tool_choice")})


def _count(body: Mapping[str, Any], param: str) -> int | None:
    value = body.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadField(param, f"{param}: Input should be a valid integer")
    if value < 0:
        raise BadField(param, f"{param} must be non-negative, got {value}.")
    if value > MAX_LOGPROBS:
        raise BadField(
            param,
            f"Requested sample logprobs of {value}, which is greater than max allowed: "
            f"{MAX_LOGPROBS}",
        )
    return value


def _completion_logprobs(body: Mapping[str, Any]) -> int | None:
    return _count(body, "logprobs")


def _chat_logprobs(body: Mapping[str, Any]) -> int | None:
    asked = body.get("logprobs")
    if asked is not None and not isinstance(asked, bool):
        raise BadField("logprobs", "logprobs: Input should be a valid boolean")
    top = _count(body, "top_logprobs")
    if not asked:
        if top:
            raise BadField("top_logprobs", "when using `top_logprobs`, `logprobs` must be true")
        return None
    return top or 0


def _n(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int):
        raise BadField("n", "n: Input should be a valid integer")
    if n < 1:
        raise BadField("n", f"n must be at least 1, got {n}.")
    return n
