"""Table-driven tests of request parsing and response shapes (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from warmgw.sim import api, bodies
from warmgw.sim.api import ApiError, Kind
from warmgw.sim.model import SimConfig

CFG = SimConfig(max_model_len=20, default_max_tokens=8)


def parse(kind: Kind, body: Any) -> api.GenRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.parse_request(kind, raw, CFG)


@pytest.mark.parametrize(
    ("kind", "body", "prompt_tokens", "max_tokens", "stream", "usage"),
    [
        (Kind.COMPLETION, {"model": "tiny", "prompt": "a b c"}, 3, 8, False, False),
        (Kind.COMPLETION, {"prompt": "a b c", "max_tokens": 2}, 3, 2, False, False),  # no model
        (Kind.COMPLETION, {"prompt": "a " * 15}, 15, 5, False, False),  # default clamped to fit
        (Kind.CHAT, {"messages": [{"role": "user", "content": "x y"}], "stream": True},
         2 + 8, 8, True, False),
        (Kind.CHAT, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
                     "max_completion_tokens": 4, "stream": True,
                     "stream_options": {"include_usage": True}}, 1 + 8, 4, True, True),
        # as real vLLM 0.32: clamped to max_model_len, not a 400; "yes" is a true "stream"
        (Kind.COMPLETION, {"prompt": "a " * 10, "max_tokens": 11, "stream": "yes"},
         10, 10, True, False),
    ],
)  # fmt: skip
def test_parse_ok(
    kind: Kind, body: Any, prompt_tokens: int, max_tokens: int, stream: bool, usage: bool
) -> None:
    req = parse(kind, body)
    assert (req.model, req.prompt_tokens, req.max_tokens) == ("tiny", prompt_tokens, max_tokens)
    assert (req.stream, req.include_usage) == (stream, usage)


@pytest.mark.parametrize(
    ("kind", "body", "status", "needle"),
    [
        (Kind.COMPLETION, b"{not json", 400, "JSON decode error"),
        (Kind.COMPLETION, [1, 2], 400, "object"),
        (Kind.COMPLETION, {"model": "big", "prompt": "x"}, 404,
         "The model `big` does not exist. Valid aliases: tiny."),
        (Kind.COMPLETION, {"model": 3, "prompt": "x"}, 400, "model"),
        (Kind.COMPLETION, {"prompt": 7}, 400, "prompt"),
        (Kind.COMPLETION, {"prompt": "a " * 21}, 400, "maximum context length is 20"),
        (Kind.COMPLETION, {"prompt": "a", "max_tokens": 21}, 400, "(21 > 20 - 1)"),
        (Kind.COMPLETION, {"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        (Kind.CHAT, {"messages": []}, 400, "messages"),
        (Kind.CHAT, {"messages": [{"role": "user", "content": "x"}], "stream": "maybe"}, 400,
         "stream"),
        (Kind.CHAT, {"messages": [{"role": "user", "content": "x"}], "stream": 2}, 400,
         "stream"),
        (Kind.EMBEDDING, {"input": "a " * 21}, 400, "maximum context length"),
        (Kind.EMBEDDING, {"input": None}, 400, "prompt"),
    ],
)  # fmt: skip
def test_parse_errors(kind: Kind, body: Any, status: int, needle: str) -> None:
    with pytest.raises(ApiError) as info:
        parse(kind, body)
    assert info.value.status == status
    assert needle in info.value.message
    err = info.value.body()["error"]
    assert err["code"] == status
    assert err["type"] == ("NotFoundError" if status == 404 else "BadRequestError")
    assert set(err) == {"message", "type", "param", "code"}


def test_embedding_inputs_and_vectors() -> None:
    req = parse(Kind.EMBEDDING, {"input": ["a b", "c", "d e f"]})
    assert (req.n_inputs, req.prompt_tokens, req.max_tokens) == (3, 6, 0)
    body = bodies.embedding_response("embd-1", 0, req, dim=8)
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(len(v) == 8 and abs(sum(x * x for x in v) - 1) < 1e-4 for v in vectors)
    assert vectors[0] != vectors[1]
    assert parse(Kind.EMBEDDING, {"input": [1, 2, 3]}).n_inputs == 1  # one token-id input


@pytest.mark.parametrize(
    ("kind", "header", "expected"),
    [(Kind.CHAT, "abc", "chatcmpl-abc"), (Kind.COMPLETION, "abc", "cmpl-abc"),
     (Kind.COMPLETION, None, "cmpl-ff")],
)  # fmt: skip
def test_response_id(kind: Kind, header: str | None, expected: str) -> None:
    assert api.response_id(kind, header, "ff") == expected


def test_sse_framing() -> None:
    assert api.sse({"a": 1}) == b'data: {"a":1}\n\n'
    assert api.SSE_DONE == b"data: [DONE]\n\n"
    last = bodies.token_chunk("c", Kind.CHAT, 1, "tiny", "x", "length")
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["object"] == "chat.completion.chunk"
