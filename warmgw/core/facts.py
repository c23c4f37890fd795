"""What a front-end extracts from a request once, cheaply (no tokenizer on the request
path), and the refusals it answers without picking a replica."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from warmgw.core.prefix import RoutingParams, text_chunks
from warmgw.core.shapes import (
    PLAIN,
    Features,
    ShapeKey,
    TokenRatios,
    features_of,
    fine,
)

ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
}


def route_of(path: str) -> str:
    return ROUTES.get(path, "other")


_new_key = tuple.__new__  # a ShapeKey without NamedTuple's Python-level __new__ (hot path)


class RequestFacts:
    """What a front-end extracts from a request once, cheaply (no tokenizer)."""

    __slots__ = ("chunks", "features", "key", "max_tokens", "model", "prompt_bytes", "route",
                 "session", "stream", "text_bytes", "tokens")

    def __init__(self, route: str, model: str | None, stream: bool, prompt_bytes: int,
                 max_tokens: int, tokens: int = 0, features: Features = PLAIN,
                 chunks: tuple[int, ...] = (), session: str | None = None,
                 text_bytes: int = 0) -> None:
        self.route = route  # "chat", "completions", "embeddings", "models", "other"
        self.model = model
        self.stream = stream
        self.prompt_bytes = prompt_bytes
        self.max_tokens = max_tokens
        self.tokens = tokens  # prompt tokens, estimated from the bytes (0: not a prompt)
        self.features = features
        # core.shapes.latency_key, inline (hot path)
        self.key = ((tokens.bit_length() << 9) | (max_tokens.bit_length() << 2)
                    | (route == "chat") << 1 | stream)
        self.chunks = chunks  # chained hashes of the prompt's chunks (core.prefix), if on
        self.session = session  # the session affinity key, if on
        self.text_bytes = text_bytes  # bytes of the prompt's text the chunks were cut from

    def shape(self, prompt_tokens: int) -> ShapeKey | None:
        """The feature-shape, with the exact prompt size when the replica told it."""
        if self.route != "chat" and self.route != "completions":
            return None
        return _new_key(ShapeKey, (self.model or "", self.route, self.stream,
                                   fine(prompt_tokens or self.tokens), self.features))


class Refusal:
    """Why no endpoint can be picked for a request, as the front-end should answer it."""

    __slots__ = ("code", "message", "param", "retry", "status", "type")

    def __init__(self, status: int, message: str, type_: str, code: str,
                 param: str | None = None, retry: bool = False) -> None:
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.retry = retry  # the answer may change soon (503): say Retry-After



def from_json(path: str, obj: Any, body_bytes: int, sole_model: str | None,
              ratios: TokenRatios, keep: Callable[[str, str], None] | None = None,
              routing: RoutingParams | None = None, session: str | None = None,
              ) -> RequestFacts | Refusal:
    """The facts of a JSON request body (already parsed), or why it is refused (400).
    sole_model: the one model the fleet serves, taken when the request names none; keep:
    given each structured-output spec and tool list (core.shapes.features_of); routing
    (None: no affinity): prefix chunks and the session key (`session`: the header's value,
    when the front-end found one)."""
    if not isinstance(obj, dict):
        return Refusal(400, "request body must be a JSON object", "invalid_request_error",
                       "invalid_json")
    model = obj.get("model")
    if model is None:
        model = sole_model
        if model is None:
            return Refusal(400, "the request names no 'model'", "invalid_request_error",
                           "missing_model", "model")
    elif not isinstance(model, str):
        return Refusal(400, f"'model' must be a string, got {model!r}",
                       "invalid_request_error", "invalid_model", "model")
    stream = obj.get("stream") is True
    mt = obj.get("max_tokens") or obj.get("max_completion_tokens")
    max_tokens = mt if type(mt) is int and mt > 0 else 16
    route = route_of(path)
    if route != "chat" and route != "completions":
        return RequestFacts(route, model, stream, body_bytes, max_tokens)
    features, spec_bytes = features_of(obj, keep)
    prompt_bytes = body_bytes - spec_bytes  # a schema or a tool list is not prompt
    if routing is None:
        return RequestFacts(route, model, stream, prompt_bytes, max_tokens,
                            ratios.estimate(model, prompt_bytes), features)
    text_bytes, chunks = text_chunks(route, obj, model, routing.prefix) if routing.prefix.enabled \
        else (0, ())
    if session is None and routing.session.use_user_field:
        user = obj.get("user")
        session = user if isinstance(user, str) and user else None
    return RequestFacts(route, model, stream, prompt_bytes, max_tokens,
                        ratios.estimate(model, prompt_bytes), features, chunks, session,
                        text_bytes)


PROMPT_TOKENS = b'"prompt_tokens":'
_NUMBER = re.compile(rb" *(\d+)")


def prompt_tokens_of(data: bytes) -> int:
    """usage.prompt_tokens of an OpenAI response body (or a stream's last event), 0 when
    it has none: the replica's own count of the prompt, found without parsing the body
    (vLLM writes usage last)."""
    i = data.rfind(PROMPT_TOKENS)
    if i < 0:
        return 0
    m = _NUMBER.match(data, i + len(PROMPT_TOKENS))
    return int(m.group(1)) if m else 0


CACHED_TOKENS = b'"cached_tokens":'


def cached_tokens_of(data: bytes) -> int:
    """usage.prompt_tokens_details.cached_tokens of a response body (or a stream's last
    event): the prompt tokens the replica found in its prefix cache (vLLM with
    --enable-prompt-tokens-details); -1 when it does not say. Found as prompt_tokens is."""
    i = data.rfind(CACHED_TOKENS)
    if i < 0:
        return -1
    m = _NUMBER.match(data, i + len(CACHED_TOKENS))
    return int(m.group(1)) if m else -1
