"""Cold rules over real sockets: each first use is paid once per process and shows in the
replica's request records (GET /sim/requests); LoRA adapters are listed, served, evicted
and exported like vLLM's; logprobs and n > 1 come back in vLLM's shapes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI
from sim_helpers import FAST, scrape, wait_until

from warmgw.sim import WARMUP_HEADER, SimConfig, SimReplica, cold_rules

# Real penalties, but small: the records, not the clock, prove what was paid.
FEATURES = SimConfig(**(dataclasses.asdict(FAST) | cold_rules("features", scale=0.01)))
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
SAME_SCHEMA = {"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "type": "object"}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def json_schema(schema: object) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def chat(**extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2} | extra


def completion(words: int = 3, **extra: Any) -> dict[str, Any]:
    return {"prompt": " ".join(["w"] * words), "max_tokens": 2} | extra


@pytest.fixture
async def feat() -> AsyncIterator[SimReplica]:
    async with SimReplica(FEATURES, name="feat") as r:
        yield r


async def send(
    session: aiohttp.ClientSession, r: SimReplica, body: dict[str, Any], warmup: bool = False
) -> dict[str, Any]:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    headers = {WARMUP_HEADER: "1"} if warmup else {}
    async with session.post(r.url + path, json=body, headers=headers) as resp:
        out: dict[str, Any] = await resp.json()
        assert resp.status == 200, out
        return out


async def records(session: aiohttp.ClientSession, r: SimReplica, query: str = "") -> list[Any]:
    async with session.get(r.url + "/sim/requests" + query) as resp:
        assert resp.status == 200
        out: list[Any] = (await resp.json())["requests"]
        return out


async def test_every_first_use_is_paid_once_and_recorded(
    feat: SimReplica, session: aiohttp.ClientSession
) -> None:
    steps: list[tuple[dict[str, Any], list[str]]] = [
        (completion(3), ["prompt_bucket:8", "batch_bucket:1"]),
        (completion(3), []),
        (completion(10), ["prompt_bucket:12"]),
        (completion(3, model="sql-lora"), ["adapter:sql-lora"]),
        (completion(3, model="sql-lora"), []),
        (chat(response_format=json_schema(SCHEMA)), ["grammar:"]),  # 1 + 8 tokens: bucket 12
        (chat(response_format=json_schema(SAME_SCHEMA)), []),  # the same spec, keys reordered
        (chat(response_format={"type": "json_object"}), ["grammar:"]),
        (completion(3, guided_regex="[a-z]+"), ["grammar:"]),
        (chat(tools=TOOLS), ["tools:"]),
        (chat(tools=TOOLS, tool_choice="auto"), ["tools:"]),  # another tool_choice: distinct
        (chat(tools=TOOLS), []),
        (completion(3, logprobs=2), ["logprobs"]),
        (chat(logprobs=True, top_logprobs=1), []),
        (chat(n=2), ["n"]),
        (completion(3, n=3), []),
        (chat(model="chat-lora", response_format=json_schema({"type": "string"}), logprobs=True),
         ["adapter:chat-lora", "grammar:"]),  # the sum of every first use hit
    ]  # fmt: skip
    for body, _ in steps:
        await send(session, feat, body)
    recs = await records(session, feat)
    assert len(recs) == len(steps)
    for rec, (body, expected) in zip(recs, steps, strict=True):
        assert len(rec["cold"]) == len(expected), (body, rec)
        assert all(got.startswith(want) for got, want in zip(rec["cold"], expected, strict=True))
        assert rec["paid_cold"] is bool(expected) and rec["warmup"] is False
        assert rec["model"] == body.get("model", "tiny")
    grammars = [c for rec in recs for c in rec["cold"] if c.startswith("grammar:")]
    assert len(set(grammars)) == 4 and all(len(g) == len("grammar:") + 12 for g in grammars)
    assert recs[-1]["features"] == ["adapter:chat-lora", grammars[-1], "logprobs:0"]
    assert recs[14]["features"] == ["n:2"] and recs[0]["features"] == []
    assert [r["prompt_tokens"] for r in recs[:3]] == [3, 3, 10]
    assert feat.stats.user_cold_hits == sum(1 for _, e in steps if e)
    async with session.get(feat.url + "/sim/stats") as resp:
        stats = await resp.json()
    assert stats["warm_prompt_buckets"] == [8, 12]
    assert stats["prompt_buckets"][:4] == [8, 12, 18, 27] and stats["batch_buckets"][0] == 1
    assert stats["loaded_adapters"] == ["sql-lora", "chat-lora"]
    assert {"logprobs", "n"} <= set(stats["warm_features"]) and len(stats["warm_features"]) == 8

    # a restart is a new process: everything is cold again
    async with session.post(feat.url + "/sim/restart") as resp:  # keeps this connection
        assert resp.status == 200
    await send(session, feat, completion(3, model="sql-lora", logprobs=0))
    assert (await records(session, feat, "?limit=1"))[0]["cold"] == [
        "prompt_bucket:8", "batch_bucket:1", "adapter:sql-lora", "logprobs"]  # fmt: skip


async def test_warmup_pays_so_users_do_not(
    feat: SimReplica, session: aiohttp.ClientSession
) -> None:
    warm = [completion(3, model="sql-lora", logprobs=1), chat(tools=TOOLS, n=2)]
    for body in warm:
        await send(session, feat, body, warmup=True)
    for body in warm:
        await send(session, feat, body)
    recs = await records(session, feat)
    # read from the replica's side: the first request with each feature was a warmup one,
    # and no user request paid anything
    for tag in ("adapter:sql-lora", "logprobs:1", "n:2"):
        first = min((r for r in recs if tag in r["features"]), key=lambda r: r["start"])
        assert first["warmup"] is True and first["cold"]
    assert all(r["cold"] == [] for r in recs if not r["warmup"])
    assert (feat.stats.user_cold_hits, feat.stats.warmup_cold_hits) == (0, 2)


async def test_evicted_adapter_pays_again(session: aiohttp.ClientSession) -> None:
    cfg = dataclasses.replace(FEATURES, lora_adapters=("a", "b", "c"), max_loras=2)
    async with SimReplica(cfg) as r:
        for name in "abcacb":
            await send(session, r, completion(3, model=name))
        adapters = [[c for c in rec["cold"] if c.startswith("adapter:")]
                    for rec in await records(session, r)]  # fmt: skip
        # 2 slots, least recently used first: ab -> bc (a evicted) -> ca (b evicted) ->
        # ac (c was loaded: free) -> cb (a evicted)
        assert adapters == [["adapter:a"], ["adapter:b"], ["adapter:c"], ["adapter:a"], [],
                            ["adapter:b"]]  # fmt: skip
        assert r.process.cold.loaded_adapters == ("c", "b")
        await send(session, r, completion(3, model="a"))
        assert (await records(session, r, "?limit=1"))[0]["cold"] == ["adapter:a"]


async def test_models_lists_lora_adapters_like_vllm(session: aiohttp.ClientSession) -> None:
    cfg = dataclasses.replace(FAST, lora_adapters=("sql-lora", "chat=/srv/loras/chat"))
    async with SimReplica(cfg) as r:
        async with session.get(r.url + "/v1/models") as resp:
            data = (await resp.json())["data"]
        assert [(m["id"], m["parent"], m["root"]) for m in data] == [
            ("tiny", None, "tiny"),
            ("sql-lora", "tiny", "/adapters/sql-lora"),
            ("chat", "tiny", "/srv/loras/chat"),
        ]
        assert all(m["object"] == "model" and m["owned_by"] == "vllm" for m in data)
        out = await send(session, r, chat(model="chat"))
        assert out["model"] == "chat"  # answered under the adapter's name, as vLLM
        async with session.post(r.url + "/v1/completions", json=completion(model="sq")) as resp:
            assert resp.status == 404


def lora_series(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("vllm:lora_requests_info{")}


async def test_lora_requests_info_metric(session: aiohttp.ClientSession) -> None:
    assert not lora_series(await _scrape_fast(session))  # LoRA off: no such metric
    cfg = dataclasses.replace(FAST, lora_adapters=("a", "b"), max_loras=2, max_running=1,
                              itl=0.05)  # fmt: skip
    async with SimReplica(cfg) as r:
        idle = 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",' \
               'waiting_lora_adapters=""}'  # fmt: skip
        assert list(lora_series(await scrape(session, r.url))) == [idle]
        busy = [asyncio.create_task(send(session, r, completion(model="a", max_tokens=40)))]
        await wait_until(lambda: r.process.scheduler.running == 1)
        busy.append(asyncio.create_task(send(session, r, completion(model="b", max_tokens=1))))
        await wait_until(lambda: r.process.scheduler.waiting == 1)
        series = lora_series(await scrape(session, r.url))
        current = max(series, key=lambda k: series[k])  # as vLLM: the latest time stamp
        assert current == 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a",' \
                          'waiting_lora_adapters="b"}'  # fmt: skip
        for t in busy:
            t.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        await wait_until(lambda: r.process.scheduler.running == 0)
        series = lora_series(await scrape(session, r.url))
        assert max(series, key=lambda k: series[k]) == idle


async def _scrape_fast(session: aiohttp.ClientSession) -> dict[str, float]:
    async with SimReplica(FAST) as r:
        return await scrape(session, r.url)


async def test_requests_route_filters(feat: SimReplica, session: aiohttp.ClientSession) -> None:
    for words in (1, 2, 3):
        await send(session, feat, completion(words))
    recs = await records(session, feat)
    assert [r["prompt_tokens"] for r in await records(session, feat, "?limit=2")] == [2, 3]
    assert await records(session, feat, "?limit=0") == []
    since = f"?since={recs[1]['start']}"
    assert [r["prompt_tokens"] for r in await records(session, feat, since)] == [2, 3]
    async with session.get(feat.url + "/sim/requests?limit=-1") as resp:
        assert resp.status == 400


# ---------------------------------------------------------------- logprobs and n


@pytest.fixture
async def client(replica: SimReplica) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=replica.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


async def test_completion_logprobs_parse_in_openai_client(client: AsyncOpenAI) -> None:
    resp = await client.completions.create(model="tiny", prompt="a b", max_tokens=4, logprobs=2)
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert lp.text_offset is not None
    assert "".join(lp.tokens) == resp.choices[0].text and len(lp.tokens) == 4
    assert all(x is not None and x < 0 for x in lp.token_logprobs)
    assert all(len(top) == 3 and tok in top for top, tok in zip(lp.top_logprobs, lp.tokens,
                                                                 strict=True))  # fmt: skip
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(4)]
    plain = await client.completions.create(model="tiny", prompt="a b", max_tokens=4)
    assert plain.choices[0].logprobs is None and plain.choices[0].text == resp.choices[0].text


async def test_chat_logprobs_whole_and_streamed(client: AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    resp = await client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=3, logprobs=True, top_logprobs=2
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content) == 3
    assert "".join(c.token for c in lp.content) == resp.choices[0].message.content
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].token == c.token for c in lp.content)
    assert all(c.bytes == list(c.token.encode()) and c.logprob < 0 for c in lp.content)
    stream = await client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=3, logprobs=True, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].logprobs is None  # the role chunk
    streamed = [c.choices[0].logprobs for c in chunks[1:]]
    assert all(s is not None and s.content and len(s.content) == 1 for s in streamed)
    assert [s.content[0].token for s in streamed if s and s.content] == [
        c.token for c in lp.content]  # fmt: skip


async def test_n_choices_whole_and_streamed(client: AsyncOpenAI) -> None:
    resp = await client.completions.create(model="tiny", prompt="a b", max_tokens=3, n=3)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert len({c.text for c in resp.choices}) == 3
    assert resp.usage is not None and resp.usage.completion_tokens == 9
    messages: Any = [{"role": "user", "content": "hi"}]
    stream = await client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=3, n=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    text: dict[int, str] = {0: "", 1: ""}
    finish: dict[int, list[str | None]] = {0: [], 1: []}
    roles = []
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.index)
            text[c.index] += c.delta.content or ""
            if c.delta.content:
                finish[c.index].append(c.finish_reason)
    assert roles == [0, 1] and text[0] != text[1] and all(text.values())
    assert finish == {0: [None, None, "length"], 1: [None, None, "length"]}
    assert usage is not None and usage.completion_tokens == 6
