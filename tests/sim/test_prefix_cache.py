"""The simulator's prefix cache: LRU of chained blocks, cached_tokens in usage, vLLM's
counters, TTFT paid on the uncached part of the prompt."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import aiohttp
import pytest
from sim_helpers import FAST, scrape, vllm

from warmgw.sim import SimReplica
from warmgw.sim.fleet import SimFleet
from warmgw.sim.prefix import PrefixCache

BS = 4


def words(prefix: str, n: int) -> list[int]:
    return [hash(f"{prefix}{i}") & 0xFFFF for i in range(n)]


def test_a_repeated_prompt_hits_all_its_full_blocks_but_the_last_token() -> None:
    c = PrefixCache(BS, 100)
    p = words("a", 10)  # 2 full blocks + 2 tokens
    assert c.serve(p) == 0
    assert c.serve(p) == 8
    q = words("a", 12)  # 3 full blocks: the last one holds the last token, recomputed
    assert c.serve(q) == 8
    assert c.serve(q) == 8


def test_a_shared_prefix_hits_up_to_the_first_different_block() -> None:
    c = PrefixCache(BS, 100)
    c.serve(words("a", 16))
    other = words("a", 6) + words("b", 10)  # same first block, second differs at token 6
    assert c.serve(other) == 4
    changed_head = words("z", 1) + words("a", 16)[1:]
    assert c.serve(changed_head) == 0  # chained: a different first block misses all


def test_capacity_evicts_least_recently_used_prefixes_head_last() -> None:
    c = PrefixCache(BS, 4)
    a, b = words("a", 9), words("b", 9)  # 2 full blocks each
    c.serve(a)
    c.serve(b)
    assert len(c) == 4
    assert c.serve(a) == 8  # both fit
    c.serve(words("c", 13))  # 3 blocks: evicts b's two and a's tail, not a's head
    assert len(c) == 4
    assert c.serve(a) == 4  # the head was freed last: it outlived the tail
    assert c.serve(words("c", 13)) == 8  # a's tail evicted c's tail only
    assert c.serve(b) == 0
    off = PrefixCache(BS, 0)
    assert off.serve(a) == 0 and off.serve(a) == 0 and len(off) == 0


def test_held_counts_full_leading_blocks_and_leaves_the_lru_order() -> None:
    c = PrefixCache(BS, 4)
    a, b = words("a", 9), words("b", 9)
    c.serve(a)
    c.serve(b)
    assert c.held(a) == 8  # both full blocks, the last token not subtracted
    assert c.held(words("a", 6) + words("x", 6)) == 4
    c.serve(words("c", 5))  # one block: evicts the least recently used, a's tail
    assert c.held(a) == 4  # held() did not make a recently used
    assert PrefixCache(BS, 0).held(a) == 0


CFG = dataclasses.replace(FAST, prefix_block_tokens=BS, prefix_cache_blocks=64,
                          ttft_base=0.0, ttft_per_prompt_token=0.002)


async def post(s: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]
               ) -> dict[str, Any]:
    async with s.post(url + path, json=body) as r:
        assert r.status == 200, await r.text()
        if body.get("stream"):
            events = [line[6:] for line in (await r.text()).splitlines()
                      if line.startswith("data: {")]
            return dict(json.loads(events[-1]))
        return dict(await r.json())


@pytest.mark.parametrize("stream", [False, True])
async def test_replica_reports_cached_tokens_and_vllm_counters(
    session: aiohttp.ClientSession, stream: bool
) -> None:
    r = SimReplica(CFG, name="p0")
    await r.start()
    try:
        system = " ".join(f"w{i}" for i in range(100))
        chat: dict[str, Any] = {
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": "hello there"}],
            "max_tokens": 2, "stream": stream, "stream_options": {"include_usage": True},
        }
        first = await post(session, r.url, "/v1/chat/completions", chat)
        assert first["usage"]["prompt_tokens"] == 4 + 100 + 2 + 4
        assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        chat["messages"][1]["content"] = "another question"
        second = await post(session, r.url, "/v1/chat/completions", chat)
        # template (4) + system (100) = 104 tokens = 26 full blocks shared
        assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 104}
        m = await scrape(session, r.url)
        assert m[vllm("vllm:prefix_cache_queries_total")] == 220
        assert m[vllm("vllm:prefix_cache_hits_total")] == 104
        records = [x for x in r.log if not x.warmup]
        assert records[0].ttft is not None and records[1].ttft is not None
        # 110 tokens computed, then 6: the second prefill is far shorter
        assert records[1].ttft < records[0].ttft / 4
    finally:
        await r.stop()


async def test_cache_off_by_default_answers_without_details(
    session: aiohttp.ClientSession, replica: SimReplica
) -> None:
    body = {"prompt": "a b c d e f g h i j", "max_tokens": 1}
    for _ in range(2):
        out = await post(session, replica.url, "/v1/completions", body)
        assert "prompt_tokens_details" not in out["usage"]
    m = await scrape(session, replica.url)
    assert m[vllm("vllm:prefix_cache_hits_total")] == 0


async def test_fleet_logs_what_the_other_replicas_held_when_a_request_was_scheduled(
    session: aiohttp.ClientSession
) -> None:
    fleet = SimFleet(CFG, 3)
    await fleet.start()
    try:
        r0, r1, r2 = fleet.replicas
        system = " ".join(f"w{i}" for i in range(100))
        chat: dict[str, Any] = {
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": "hello there"}], "max_tokens": 1}
        await post(session, r0.url, "/v1/chat/completions", chat)
        chat["messages"][1]["content"] = "another question"
        await post(session, r1.url, "/v1/chat/completions", chat)
        # nobody else held it when r0 served it; r0 held the 26 shared blocks when r1 did
        assert [x.fleet_cached_tokens for x in r0.log] == [0]
        assert [x.fleet_cached_tokens for x in r1.log] == [104]
        async with session.get(r1.url + "/sim/requests") as resp:
            logged = (await resp.json())["requests"]
        assert [x["fleet_cached_tokens"] for x in logged] == [104]
        assert not r2.log
    finally:
        await fleet.stop()
    alone = SimReplica(CFG, name="alone")
    await alone.start()
    try:
        await post(session, alone.url, "/v1/chat/completions", chat)
        assert [x.fleet_cached_tokens for x in alone.log] == [-1]  # no other replica
    finally:
        await alone.stop()
