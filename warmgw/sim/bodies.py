"""OpenAI/vLLM response bodies: completions and chat (whole or as SSE chunks), n choices,
logprobs, embeddings.

Generated tokens and their logprobs are deterministic: choice i of a request with P prompt
tokens uses the salt ``P + 7919 * i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from warmgw.sim.api import GenRequest, Kind
from warmgw.sim.tokens import generated_token


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = -1
          ) -> dict[str, Any]:
    """vLLM's usage; with the prefix cache on (cached_tokens >= 0) also
    prompt_tokens_details.cached_tokens (vLLM's --enable-prompt-tokens-details)."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    if cached_tokens >= 0:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


def choice_salt(prompt_tokens: int, index: int) -> int:
    return prompt_tokens + 7919 * index


# ---------------------------------------------------------------- logprobs


def _logprob(position: int, salt: int) -> float:
    """A plausible log probability in (-4.005, -0.005]."""
    h = (position * 2246822519 + salt * 3266489917 + 12345) & 0xFFFFFFFF
    return -round(0.005 + (h % 4000) / 1000, 4)


def _alternatives(position: int, salt: int, token: str, count: int) -> list[tuple[str, float]]:
    """The sampled token first, then ``count`` other tokens with lower logprobs."""
    lp = _logprob(position, salt)
    out = [(token, lp)]
    seen = {token}
    k = 1
    while len(out) <= count:
        alt = generated_token(position, salt + 104729 * k)
        if alt in seen:  # keep the keys distinct
            alt = f"{alt}{k}"
        seen.add(alt)
        out.append((alt, round(lp - 0.5 * k - 0.25, 4)))
        k += 1
    return out


def completion_logprobs(
    tokens: Sequence[str], first: int, top: int, salt: int, text_offset: int
) -> dict[str, Any]:
    """vLLM's completions logprobs for ``tokens`` (generation positions first, first+1,
    ...): the sampled token's logprob and a top_logprobs dict of up to top + 1 entries."""
    offsets: list[int] = []
    lps: list[float] = []
    tops: list[dict[str, float]] = []
    for i, token in enumerate(tokens):
        offsets.append(text_offset)
        text_offset += len(token)
        alts = _alternatives(first + i, salt, token, top)
        lps.append(alts[0][1])
        tops.append(dict(alts))
    return {
        "text_offset": offsets,
        "token_logprobs": lps,
        "tokens": list(tokens),
        "top_logprobs": tops,
    }


def chat_logprobs(tokens: Sequence[str], first: int, top: int, salt: int) -> dict[str, Any]:
    """vLLM's chat logprobs: ``{"content": [{token, logprob, bytes, top_logprobs}]}`` with
    ``top`` entries in each top_logprobs (the sampled token first)."""
    content = []
    for i, token in enumerate(tokens):
        alts = _alternatives(first + i, salt, token, max(top - 1, 0))[:top]
        content.append(
            {
                "token": token,
                "logprob": _logprob(first + i, salt),
                "bytes": list(token.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts
                ],
            }
        )
    return {"content": content}


def logprobs_for(
    kind: Kind, tokens: Sequence[str], first: int, top: int | None, salt: int, offset: int
) -> dict[str, Any] | None:
    """The choice's ``logprobs`` value: None when not asked (``top`` None)."""
    if top is None:
        return None
    if kind is Kind.CHAT:
        return chat_logprobs(tokens, first, top, salt)
    return completion_logprobs(tokens, first, top, salt, offset)


# ---------------------------------------------------------------- bodies


def _envelope(rid: str, kind: Kind, created: int, model: str, stream: bool) -> dict[str, Any]:
    if kind is Kind.CHAT:
        obj = "chat.completion.chunk" if stream else "chat.completion"
    else:
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model}


def role_chunk(rid: str, created: int, model: str, index: int = 0) -> dict[str, Any]:
    """First chat SSE chunk of a choice: the assistant role with empty content."""
    choice = {
        "index": index,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    return _envelope(rid, Kind.CHAT, created, model, True) | {"choices": [choice]}


def token_chunk(
    rid: str,
    kind: Kind,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index}
    if kind is Kind.CHAT:
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    choice["logprobs"] = logprobs
    choice["finish_reason"] = finish_reason
    if finish_reason is not None or kind is Kind.COMPLETION:
        choice["stop_reason"] = None
    return _envelope(rid, kind, created, model, True) | {"choices": [choice]}


def usage_chunk(
    rid: str, kind: Kind, created: int, model: str, prompt_tokens: int, completion_tokens: int,
    cached_tokens: int = -1,
) -> dict[str, Any]:
    env = _envelope(rid, kind, created, model, True)
    return env | {"choices": [], "usage": usage(prompt_tokens, completion_tokens, cached_tokens)}


def full_response(rid: str, created: int, req: GenRequest) -> dict[str, Any]:
    """Non-streaming chat.completion or text_completion body: n choices of max_tokens."""
    choices = []
    n_tokens = req.max_tokens
    for index in range(req.features.n):
        salt = choice_salt(req.prompt_tokens, index)
        tokens = [generated_token(i, salt) for i in range(n_tokens)]
        text = "".join(tokens)
        choice: dict[str, Any] = {"index": index}
        if req.kind is Kind.CHAT:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        choice["logprobs"] = logprobs_for(req.kind, tokens, 0, req.features.logprobs, salt, 0)
        choice |= {"finish_reason": "length", "stop_reason": None}
        choices.append(choice)
    return _envelope(rid, req.kind, created, req.model, False) | {
        "choices": choices,
        "usage": usage(req.prompt_tokens, n_tokens * req.features.n, req.cached_tokens),
    }


def embedding_vector(index: int, tokens: int, dim: int) -> list[float]:
    """A deterministic unit vector."""
    raw = [math.sin(1.0 + index * 7.0 + tokens * 0.37 + k * 1.3) for k in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def embedding_response(rid: str, created: int, req: GenRequest, dim: int) -> dict[str, Any]:
    data = [
        {
            "index": i,
            "object": "embedding",
            "embedding": embedding_vector(i, req.prompt_tokens, dim),
        }
        for i in range(req.n_inputs)
    ]
    return {
        "id": rid,
        "object": "list",
        "created": created,
        "model": req.model,
        "data": data,
        "usage": {"prompt_tokens": req.prompt_tokens, "total_tokens": req.prompt_tokens},
    }
