"""Prefix affinity end to end: the gateway in front of simulated replicas whose prefix
caches are smaller than the fleet's hot set. Affinity keeps each prefix on few replicas,
so the replicas' own counters (vllm:prefix_cache_hits / _queries) show a higher hit rate
than round robin's, while the load stays within the bound."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import gateway_config, wait_all_ready
from warmgw.app import Gateway
from warmgw.sim import SimConfig, SimFleet

REPLICAS = 4
PREFIXES = 24  # hot set: 24 x ~13 blocks = ~310 blocks; one replica's cache holds 96
REQUESTS = 480
CONCURRENCY = 12
SIM = SimConfig(ttft_base=0.002, ttft_per_prompt_token=0.00002, itl=0.001,
                prefix_block_tokens=16, prefix_cache_blocks=96)


def documents() -> list[str]:
    return [" ".join(f"d{p}w{i}" for i in range(200)) for p in range(PREFIXES)]


async def counters(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    got = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return got["vllm:prefix_cache_hits_total"], got["vllm:prefix_cache_queries_total"]


async def run(strategy: str, routing: dict[str, Any]) -> tuple[float, float]:
    """(hit rate of the user traffic, max / mean requests per replica)."""
    async with SimFleet(SIM, replicas=REPLICAS) as fleet:
        cfg = gateway_config(fleet.urls, strategy=strategy, routing=routing)
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await wait_all_ready(gw)
            before = [await counters(s, u) for u in fleet.urls]
            sent = [len([x for x in r.log if not x.warmup]) for r in fleet.replicas]
            docs = documents()
            rng = random.Random(5)
            order = [rng.randrange(PREFIXES) for _ in range(REQUESTS)]
            queue: asyncio.Queue[int] = asyncio.Queue()
            for k, p in enumerate(order):
                queue.put_nowait(k * 1000 + p)

            async def worker() -> None:
                while not queue.empty():
                    k, p = divmod(queue.get_nowait(), 1000)
                    body = {"model": "tiny", "max_tokens": 2, "messages": [
                        {"role": "system", "content": docs[p]},
                        {"role": "user", "content": f"question {k} about it"}]}
                    async with s.post(gw.url + "/v1/chat/completions", json=body) as r:
                        assert r.status == 200, await r.text()
                        await r.read()

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            after = [await counters(s, u) for u in fleet.urls]
            served = [len([x for x in r.log if not x.warmup]) - n
                      for r, n in zip(fleet.replicas, sent, strict=True)]
    hits = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    queries = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    assert sum(served) == REQUESTS
    return hits / queries, max(served) / (sum(served) / REPLICAS)


@pytest.mark.timeout(120)
async def test_prefix_affinity_beats_round_robin_on_hit_rate_within_the_load_bound() -> None:
    rr_hits, rr_balance = await run("round_robin", {})
    hits, balance = await run("warm", {"prefix": {"enabled": True, "epsilon": 0.25}})
    print(f"hit rate: round robin {rr_hits:.1%}, prefix affinity {hits:.1%}; "
          f"max/mean: {rr_balance:.2f} vs {balance:.2f}")
    assert hits > rr_hits + 0.2
    assert balance <= 1.25


@pytest.mark.timeout(60)
async def test_session_header_keeps_a_conversation_on_one_replica() -> None:
    async with SimFleet(SimConfig(ttft_base=0.001, itl=0.001), replicas=3) as fleet:
        cfg = gateway_config(fleet.urls, routing={"session": {"header": "X-Session-Id"}})
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await wait_all_ready(gw)
            for i in range(30):  # one at a time: the load never outweighs the session
                sess = i % 3  # its prompt's length tells the session in the replicas' logs
                body = {"model": "tiny", "max_tokens": 1, "messages": [
                    {"role": "user", "content": " ".join(["w"] * (sess + 1)) + f" {i}"}]}
                hdr = {"X-Session-Id": f"conv-{sess}"}
                async with s.post(gw.url + "/v1/chat/completions", json=body,
                                  headers=hdr) as r:
                    assert r.status == 200
            where: dict[int, set[str]] = {}
            for rep in fleet.replicas:
                for rec in rep.log:
                    if not rec.warmup:
                        where.setdefault(rec.prompt_tokens, set()).add(rep.name)
    assert sorted(where) == [10, 11, 12]  # 8 template tokens + (session + 1) + 1
    assert all(len(names) == 1 for names in where.values()), where
