"""OpenAI/vLLM wire shapes: request parsing and response bodies."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiohttp import web

from warmgw.sim.model import SimConfig, chat_prompt_tokens, completion_prompt_tokens

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
    model: str
    prompt_tokens: int
    max_tokens: int  # 0 for embeddings
    stream: bool
    include_usage: bool
    n_inputs: int = 1  # embeddings: number of input items


def parse_request(kind: Kind, raw: bytes, config: SimConfig) -> GenRequest:
    """Validate a POST body the way vLLM does (for what a gateway can observe)."""
    try:
        body = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Input should be a valid dictionary or object")
    model = body.get("model")
    if model is None:  # vLLM falls back to the served model
        model = config.model
    if not isinstance(model, str):
        raise ApiError(400, "model: Input should be a valid string", "model")
    if model != config.model:
        raise ApiError(
            404,
            f"The model `{model}` does not exist. Valid aliases: {config.model}.",
            "model",
        )
    try:
        if kind is Kind.CHAT:
            prompt_tokens = chat_prompt_tokens(body.get("messages"))
        elif kind is Kind.COMPLETION:
            prompt_tokens = completion_prompt_tokens(body.get("prompt"))
        else:
            return _parse_embedding(body, model, config)
    except ValueError as exc:
        raise ApiError(400, str(exc), _INPUT_PARAM[kind]) from None
    stream = _lax_bool(body.get("stream"), "stream")
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
    return GenRequest(
        kind=kind,
        model=model,
        prompt_tokens=prompt_tokens,
        max_tokens=_max_tokens(body, kind, prompt_tokens, config),
        stream=stream,
        include_usage=include_usage,
    )


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


def _parse_embedding(body: Mapping[str, Any], model: str, cfg: SimConfig) -> GenRequest:
    items = body.get("input")
    if isinstance(items, list) and items and all(isinstance(i, str | list) for i in items):
        inputs: list[object] = list(items)
    else:
        inputs = [items]
    tokens = [completion_prompt_tokens(i) for i in inputs]  # ValueError -> 400 by caller
    if max(tokens) > cfg.max_model_len:
        raise prompt_too_long(cfg.max_model_len, max(tokens))
    return GenRequest(Kind.EMBEDDING, model, sum(tokens), 0, False, False, len(inputs))


# ---------------------------------------------------------------- response bodies


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


def _envelope(rid: str, kind: Kind, created: int, model: str, stream: bool) -> dict[str, Any]:
    if kind is Kind.CHAT:
        obj = "chat.completion.chunk" if stream else "chat.completion"
    else:
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model}


def role_chunk(rid: str, created: int, model: str) -> dict[str, Any]:
    """First chat SSE chunk: the assistant role with empty content."""
    choice = {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    return _envelope(rid, Kind.CHAT, created, model, True) | {"choices": [choice]}


def token_chunk(
    rid: str, kind: Kind, created: int, model: str, text: str, finish_reason: str | None
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0}
    if kind is Kind.CHAT:
        choice["delta"] = {"content": text}
    else:
        choice["text"] = text
    choice["logprobs"] = None
    choice["finish_reason"] = finish_reason
    if finish_reason is not None or kind is Kind.COMPLETION:
        choice["stop_reason"] = None
    return _envelope(rid, kind, created, model, True) | {"choices": [choice]}


def usage_chunk(
    rid: str, kind: Kind, created: int, model: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    env = _envelope(rid, kind, created, model, True)
    return env | {"choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def full_response(
    rid: str, kind: Kind, created: int, model: str, text: str, prompt_tokens: int, n_out: int
) -> dict[str, Any]:
    """Non-streaming chat.completion or text_completion body."""
    choice: dict[str, Any] = {"index": 0}
    if kind is Kind.CHAT:
        choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
    else:
        choice["text"] = text
    choice |= {"logprobs": None, "finish_reason": "length", "stop_reason": None}
    return _envelope(rid, kind, created, model, False) | {
        "choices": [choice],
        "usage": usage(prompt_tokens, n_out),
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
