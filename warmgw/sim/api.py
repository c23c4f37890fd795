"""OpenAI/vLLM wire shapes: request parsing, errors and framing (bodies: ``bodies``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiohttp import web

from warmgw.sim.config import SimConfig
from warmgw.sim.features import NO_FEATURES, BadField, Features, parse_features
from warmgw.sim.tokens import (
    chat_prompt_tokens,
    chat_token_ids,
    completion_prompt_tokens,
    completion_token_ids,
    text_token_ids,
)

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


class ApiError(Exception):
    """An error answered as ``{"error": {message, type, param, code}}`` like vLLM."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    err_type = _ERROR_TYPES.get(
        status, "BadRequestError" if status < 500 else "InternalServerError"
    )
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


class Kind(Enum):
    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"


_INPUT_PARAM = {Kind.CHAT: "messages", Kind.COMPLETION: "prompt", Kind.EMBEDDING: "input"}
_ID_PREFIX = {Kind.CHAT: "chatcmpl-", Kind.COMPLETION: "cmpl-", Kind.EMBEDDING: "embd-"}


def response_id(kind: Kind, x_request_id: str | None, random_hex: str) -> str:
    """vLLM turns ``X-Request-Id: abc`` into ``cmpl-abc`` / ``chatcmpl-abc``."""
    return _ID_PREFIX[kind] + (x_request_id or random_hex)


@dataclass(frozen=True)
class GenRequest:
    kind: Kind
    model: str  # as answered: the base model or the adapter named
    prompt_tokens: int
    max_tokens: int  # per choice; 0 for embeddings
    stream: bool
    include_usage: bool
    n_inputs: int = 1  # embeddings: number of input items
    features: Features = NO_FEATURES
    token_ids: tuple[int, ...] = ()  # the prompt's, when the prefix cache is on
    cached_tokens: int = -1  # the prompt's tokens found in the prefix cache; -1: cache off


def load_body(raw: bytes) -> dict[str, Any]:
    """A JSON object, else an ApiError 400 as vLLM words it."""
    try:
        body = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Input should be a valid dictionary or object")
    return body


def resolve_model(body: Mapping[str, Any], config: SimConfig) -> tuple[str, str | None]:
    """(model name, LoRA adapter name or None); 404 for an unknown model, as vLLM."""
    model = body.get("model")
    if model is None:  # vLLM falls back to the served model
        return config.model, None
    if not isinstance(model, str):
        raise ApiError(400, "model: Input should be a valid string", "model")
    if model == config.model:
        return model, None
    if model in config.adapters:
        return model, model
    raise ApiError(
        404,
        f"The model `{model}` does not exist. Valid aliases: {config.model}.",
        "model",
    )


def parse_request(kind: Kind, raw: bytes, config: SimConfig) -> GenRequest:
    """Validate a POST body the way vLLM does (for what a gateway can observe)."""
    body = load_body(raw)
    model, adapter = resolve_model(body, config)
    cpt = config.chars_per_token
    try:
        if kind is Kind.CHAT:
            prompt_tokens = chat_prompt_tokens(body.get("messages"), cpt)
        elif kind is Kind.COMPLETION:
            prompt_tokens = completion_prompt_tokens(body.get("prompt"), cpt)
        else:
            return _parse_embedding(body, model, adapter, config)
    except ValueError as exc:
        raise ApiError(400, str(exc), _INPUT_PARAM[kind]) from None
    try:
        features = parse_features(body, kind is Kind.CHAT, adapter)
    except BadField as exc:
        raise ApiError(400, str(exc), exc.param) from None
    stream = _lax_bool(body.get("stream"), "stream")
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
    ids: list[int] = []
    if config.prefix_cache_blocks:
        if kind is Kind.CHAT:
            ids = chat_token_ids(body.get("messages"), cpt)
        else:
            ids = completion_token_ids(body.get("prompt"), cpt)
    return GenRequest(
        kind=kind,
        model=model,
        prompt_tokens=prompt_tokens,
        max_tokens=_max_tokens(body, kind, prompt_tokens, config),
        stream=stream,
        include_usage=include_usage,
        features=features,
        token_ids=tuple(ids),
    )


def parse_tokenize(raw: bytes, config: SimConfig) -> dict[str, Any]:
    """POST /tokenize: ``{"model", "prompt"}`` or ``{"model", "messages"}`` (other vLLM
    fields such as add_special_tokens are ignored) -> vLLM's TokenizeResponse. Counts
    follow the simulator's tokenizer; like vLLM a prompt longer than max_model_len is
    counted, not rejected."""
    body = load_body(raw)
    resolve_model(body, config)
    cpt = config.chars_per_token
    if ("prompt" in body) == ("messages" in body):
        raise ApiError(400, "Exactly one of `prompt` or `messages` must be given")
    if "prompt" in body:
        if not isinstance(body["prompt"], str):
            raise ApiError(400, "prompt: Input should be a valid string", "prompt")
        tokens = text_token_ids(body["prompt"], cpt)
    else:
        try:
            tokens = chat_token_ids(body["messages"], cpt)
        except ValueError as exc:
            raise ApiError(400, str(exc), "messages") from None
    return {
        "count": len(tokens),
        "max_model_len": config.max_model_len,
        "tokens": tokens,
        "token_strs": None,
    }


# pydantic's lax mode for a bool field, as real vLLM 0.32 (FastAPI) validates "stream"
_LAX_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_LAX_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _lax_bool(value: object, param: str) -> bool:
    """None is False; bools, 0/1 and pydantic's lax strings ("yes", "off", ...) are
    accepted; anything else (2, "maybe", [1]) is a 400, like real vLLM 0.32."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LAX_TRUE | _LAX_FALSE:
        return value.strip().lower() in _LAX_TRUE
    raise ApiError(400, f"{param}: Input should be a valid boolean", param)


def prompt_too_long(limit: int, prompt_tokens: int) -> ApiError:
    """A prompt that alone exceeds max_model_len (real vLLM 0.32's wording and param)."""
    return ApiError(
        400,
        f"This model's maximum context length is {limit} tokens. However, your prompt "
        f"contains at least {prompt_tokens} input tokens, which exceeds this limit even "
        f"without any output tokens. Please reduce the length of the input prompt.",
        "input_tokens",
    )


def _max_tokens(body: Mapping[str, Any], kind: Kind, prompt_tokens: int, cfg: SimConfig) -> int:
    """Output tokens to generate. Like real vLLM 0.32, prompt + max_tokens over
    max_model_len is not an error: generation stops at max_model_len total tokens."""
    limit = cfg.max_model_len
    if prompt_tokens > limit:
        raise prompt_too_long(limit, prompt_tokens)
    room = max(1, limit - prompt_tokens)
    requested = body.get("max_completion_tokens") if kind is Kind.CHAT else None
    if requested is None:
        requested = body.get("max_tokens")
    if requested is None:
        return min(cfg.default_max_tokens, room)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {requested!r}.", "max_tokens")
    if requested > limit:
        raise ApiError(
            400,
            f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This model's "
            f"maximum context length is {limit} tokens and your request has {prompt_tokens} "
            f"input tokens ({requested} > {limit} - {prompt_tokens}).",
            "max_tokens",
        )
    return min(requested, room)


def _parse_embedding(
    body: Mapping[str, Any], model: str, adapter: str | None, cfg: SimConfig
) -> GenRequest:
    items = body.get("input")
    if isinstance(items, list) and items and all(isinstance(i, str | list) for i in items):
        inputs: list[object] = list(items)
    else:
        inputs = [items]
    # ValueError -> 400 by the caller
    tokens = [completion_prompt_tokens(i, cfg.chars_per_token) for i in inputs]
    if max(tokens) > cfg.max_model_len:
        raise prompt_too_long(cfg.max_model_len, max(tokens))
    features = Features(adapter=adapter)
    return GenRequest(Kind.EMBEDDING, model, sum(tokens), 0, False, False, len(inputs), features)


# ---------------------------------------------------------------- framing


def dumps(payload: object) -> str:
    """Compact JSON, as vLLM (pydantic) writes it."""
    return json.dumps(payload, separators=(",", ":"))


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``Content-Type: application/json`` exactly, no charset (as real vLLM 0.32)."""
    return web.Response(
        body=dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def sse(payload: Mapping[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else dumps(payload)
    return f"data: {text}\n\n".encode()


SSE_DONE = sse("[DONE]")
