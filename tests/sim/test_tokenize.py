"""POST /tokenize and the tokenizer rule over real sockets: counts agree with what the
inference routes count (usage, the context-length 400)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sim_helpers import FAST

from warmgw.sim import SimReplica

CHUNKY = dataclasses.replace(FAST, chars_per_token=3, max_model_len=20, lora_adapters=("sql",))


@pytest.fixture
async def chunky() -> AsyncIterator[SimReplica]:
    async with SimReplica(CHUNKY, name="chunky") as r:
        yield r


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with session.post(url, **kwargs) as r:
        assert r.headers["Content-Type"] == "application/json"
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("body", "count"),
    [
        ({"model": "tiny", "prompt": "hello big world"}, 3),
        ({"prompt": "hello big world", "add_special_tokens": True}, 3),  # model optional
        ({"model": "tiny", "messages": [{"role": "user", "content": "hello big world"}]}, 3 + 8),
        ({"messages": [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, 3 + 8),
        ({"prompt": ""}, 0),
    ],
)  # fmt: skip
async def test_tokenize_counts(
    replica: SimReplica, session: aiohttp.ClientSession, body: dict[str, Any], count: int
) -> None:
    status, out = await post(session, replica.url + "/tokenize", body)
    assert status == 200
    assert set(out) == {"count", "tokens", "max_model_len", "token_strs"}
    assert out["count"] == count == len(out["tokens"])
    assert out["max_model_len"] == 4096
    assert all(isinstance(t, int) for t in out["tokens"])


async def test_tokenize_agrees_with_usage_under_chars_per_token(
    chunky: SimReplica, session: aiohttp.ClientSession
) -> None:
    text = "hello big world"  # 2 + 1 + 2 tokens at 3 characters per token
    _, tok = await post(session, chunky.url + "/tokenize", {"prompt": text})
    assert tok["count"] == 5 and tok["max_model_len"] == 20
    _, done = await post(session, chunky.url + "/v1/completions",
                         {"prompt": text, "max_tokens": 1})  # fmt: skip
    assert done["usage"]["prompt_tokens"] == 5
    messages = [{"role": "user", "content": text}]
    _, tok = await post(session, chunky.url + "/tokenize", {"model": "sql", "messages": messages})
    _, done = await post(session, chunky.url + "/v1/chat/completions",
                         {"messages": messages, "max_tokens": 1})  # fmt: skip
    assert tok["count"] == done["usage"]["prompt_tokens"] == 5 + 8


async def test_context_length_400_counts_with_the_rule(
    chunky: SimReplica, session: aiohttp.ClientSession
) -> None:
    # 7 words of 9 characters: 21 tokens at 3 characters per token > max_model_len 20;
    # 7 tokens with one token per word.
    prompt = " ".join(["abcdefghi"] * 7)
    status, out = await post(session, chunky.url + "/v1/completions", {"prompt": prompt})
    assert status == 400
    assert out["error"] == {
        "message": "This model's maximum context length is 20 tokens. However, your prompt "
        "contains at least 21 input tokens, which exceeds this limit even without any output "
        "tokens. Please reduce the length of the input prompt.",
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }
    # /tokenize counts a prompt over the limit instead of rejecting it
    status, tok = await post(session, chunky.url + "/tokenize", {"prompt": prompt})
    assert (status, tok["count"]) == (200, 21)
    status, _ = await post(session, chunky.url + "/v1/completions",
                           {"prompt": " ".join(["abcdefghi"] * 6), "max_tokens": 1})  # fmt: skip
    assert status == 200  # 18 tokens fit


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "big", "prompt": "x"}, 404, "The model `big` does not exist."),
        (b"{nope", 400, "JSON decode error"),
        ([1], 400, "object"),
        ({"model": "tiny"}, 400, "prompt"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 400, "messages"),
        ({"prompt": 5}, 400, "prompt"),
        ({"prompt": ["a", "b"]}, 400, "prompt"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ({"model": 3, "prompt": "x"}, 400, "model"),
    ],
)
async def test_tokenize_errors(
    replica: SimReplica, session: aiohttp.ClientSession, body: Any, status: int, needle: str
) -> None:
    got, out = await post(session, replica.url + "/tokenize", body)
    assert got == status
    assert set(out["error"]) == {"message", "type", "param", "code"}
    assert out["error"]["code"] == status and needle in out["error"]["message"]
    assert out["error"]["type"] == ("NotFoundError" if status == 404 else "BadRequestError")


async def test_tokenize_is_not_an_inference_request(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    await post(session, replica.url + "/tokenize", {"prompt": "a b"})
    assert replica.stats.user_requests == 0 and not replica.log
