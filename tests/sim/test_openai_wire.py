"""Real sockets, official openai client: the simulator speaks vLLM's OpenAI dialect."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from sim_helpers import scrape, vllm

from warmgw.sim import SimReplica

# 3 words + 8 template tokens (per conversation) = 11 prompt tokens
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "say something nice"}]


@pytest.fixture
async def client(replica: SimReplica) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=replica.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


async def test_chat_non_stream(client: AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(model="tiny", messages=USER, max_tokens=5)
    assert resp.id.startswith("chatcmpl-") and len(resp.id) > len("chatcmpl-") + 8
    assert resp.object == "chat.completion" and resp.model == "tiny"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason == "length"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (11, 5)
    assert resp.usage.total_tokens == 16


async def test_chat_stream_with_usage(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="tiny",
        messages=USER,
        max_completion_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    content = [c for c in chunks[1:] if c.choices]
    assert len(content) == 4
    assert all(c.choices[0].delta.content for c in content)
    assert [c.choices[0].finish_reason for c in content] == [None, None, None, "length"]
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (11, 4)
    assert len({c.id for c in chunks}) == 1


async def test_chat_stream_without_usage_has_no_usage_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="tiny",
        messages=USER,
        max_tokens=3,
        stream=True,
    )
    chunks = [c async for c in stream]
    assert len(chunks) == 1 + 3
    assert all(c.choices for c in chunks)


async def test_completions_non_stream_and_stream(client: AsyncOpenAI) -> None:
    resp = await client.completions.create(model="tiny", prompt="one two three", max_tokens=6)
    assert resp.id.startswith("cmpl-") and resp.object == "text_completion"
    assert resp.choices[0].text and resp.choices[0].finish_reason == "length"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (3, 6)

    stream = await client.completions.create(
        model="tiny",
        prompt="one two three",
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) == 6
    assert "".join(texts) == resp.choices[0].text  # deterministic for the same prompt
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


async def test_default_max_tokens(client: AsyncOpenAI, replica: SimReplica) -> None:
    resp = await client.completions.create(model="tiny", prompt="hi")
    assert resp.usage is not None
    assert resp.usage.completion_tokens == replica.config.default_max_tokens


async def test_unknown_model_404(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.completions.create(model="gpt-9", prompt="hi", max_tokens=1)
    assert info.value.status_code == 404
    body = info.value.body
    assert isinstance(body, dict)
    assert body["message"] == "The model `gpt-9` does not exist. Valid aliases: tiny."
    assert body["type"] == "NotFoundError"


async def test_too_long_prompt_400(client: AsyncOpenAI, replica: SimReplica) -> None:
    words = " ".join(["w"] * (replica.config.max_model_len + 1))
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(model="tiny", prompt=words, max_tokens=10)
    assert info.value.status_code == 400
    assert "maximum context length" in str(info.value)


async def test_x_request_id_becomes_response_id(client: AsyncOpenAI) -> None:
    chat = await client.chat.completions.create(
        model="tiny",
        messages=USER,
        max_tokens=1,
        extra_headers={"X-Request-Id": "abc"},
    )
    assert chat.id == "chatcmpl-abc"
    cmpl = await client.completions.create(
        model="tiny", prompt="x", max_tokens=1, extra_headers={"X-Request-Id": "abc"}
    )
    assert cmpl.id == "cmpl-abc"


async def test_models_and_embeddings(client: AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].owned_by == "vllm"
    emb = await client.embeddings.create(model="tiny", input=["a b", "c"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert emb.usage.prompt_tokens == 3


async def test_plain_routes_and_malformed_json(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    for path in ("/health", "/ping"):
        async with session.get(replica.url + path) as r:
            assert r.status == 200 and await r.read() == b""
    async with session.get(replica.url + "/version") as r:
        assert await r.json() == {"version": "0.32.0-sim"}
    async with session.get(replica.url + "/v1/models") as r:
        card = (await r.json())["data"][0]
        assert card["max_model_len"] == 4096 and card["parent"] is None
    async with session.head(replica.url + "/health") as r:
        assert r.status == 405  # as vLLM
    async with session.get(replica.url + "/v1/nope") as r:
        assert r.status == 404 and await r.json() == {"detail": "Not Found"}
    async with session.get(replica.url + "/load") as r:
        assert await r.json() == {"server_load": 0}
    async with session.post(replica.url + "/v1/chat/completions", data=b"{oops") as r:
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "BadRequestError"


async def test_raw_sse_framing(replica: SimReplica, session: aiohttp.ClientSession) -> None:
    body = {"prompt": "a b", "max_tokens": 2, "stream": True}
    async with session.post(replica.url + "/v1/completions", json=body) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = await r.read()
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-2])
    assert len(events[:-2]) == 2


async def test_metrics_move(replica: SimReplica, session: aiohttp.ClientSession) -> None:
    before = await scrape(session, replica.url)
    assert before[vllm("vllm:prompt_tokens_total")] == 0
    assert before[vllm("vllm:num_requests_running")] == 0
    assert before["process_start_time_seconds"] == pytest.approx(replica.process_start_time)
    for _ in range(2):
        body = {"prompt": "a b c", "max_tokens": 4}
        async with session.post(replica.url + "/v1/completions", json=body) as r:
            assert r.status == 200
    after = await scrape(session, replica.url)
    assert after[vllm("vllm:prompt_tokens_total")] == 6
    assert after[vllm("vllm:generation_tokens_total")] == 8
    assert after[vllm("vllm:request_success_total", finished_reason="length")] == 2
    assert after[vllm("vllm:time_to_first_token_seconds_count")] == 2
    assert after[vllm("vllm:e2e_request_latency_seconds_count")] == 2
    assert after[vllm("vllm:time_to_first_token_seconds_sum")] > 0
    assert vllm("vllm:kv_cache_usage_perc") in after
