"""Prefix affinity against REAL vLLM: the replicas' own prefix-cache counters show a higher
hit rate through warmgw with `routing.prefix` on than through round robin.

vLLM 0.32 on the CPU caches prefixes by default (vllm:cache_config_info says
enable_prefix_caching="True") in blocks of 128 tokens; the session's replicas hold 16 of
them (--num-gpu-blocks-override 16: 2,048 tokens). The workload, the same shape for both
arms: PREFIXES chat system prompts of PREFIX_BLOCKS full blocks and a little more, each
sent USES times with its own short question, one request at a time, the prompts taking
turns (p0 p1 p2 p0 p1 p2 ...). Under round robin over two replicas each prompt's turns
alternate between the replicas (PREFIXES is odd), so each replica computes each prompt
once: two misses per prompt. With prefix affinity the gateway sends a prompt back to the
replica it sent it to before: one miss per prompt. The hot set (3 prompts x 5 blocks)
fits in one replica's cache however the gateway places it, so no eviction blurs the
difference: expected hits 2 of 4 requests against 3 of 4, on the shared part of the prompt.

Hit rate as vLLM counts it: the increase of vllm:prefix_cache_hits_total over that of
vllm:prefix_cache_queries_total (both in tokens), summed over the two replicas, over each
arm's user requests. Each arm runs its own gateway and its own prompts (another seed), so
what one arm cached gives the other nothing. Where each request went is read from the
replicas' own request logs: round robin sent every prompt to both, affinity each to one.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import gateway_config, wait_all_ready
from tests.vllm.conftest import (
    FIGURES,
    MAX_MODEL_LEN,
    SERVED,
    TIMINGS,
    Replicas,
    count_tokens,
    read_request_log,
)
from warmgw.app import Gateway

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

PREFIXES = 3  # odd: under round robin over two replicas, each prompt's turns alternate
USES = 4  # requests per prompt
PREFIX_BLOCKS = 4  # full blocks of vLLM's cache in each shared system prompt
MAX_TOKENS = 1
# A warmup that takes seconds: these replicas are warm already (the prompts' sizes are
# not what is measured here), and round robin warms nothing.
WARMUP = {
    "prompt_lengths": [16], "max_tokens": [1], "kinds": ["chat"], "streams": [False],
    "concurrency": [1], "tolerance": 0.5, "abs_tolerance": 0.1, "max_rounds": 4,
    "on_deadline": "ramp", "deadline": 60,
}  # fmt: skip
HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
SUCCESS = "vllm:request_success_total"


@dataclass(frozen=True)
class Cache:
    """A replica's prefix cache as its /metrics describes it (vllm:cache_config_info)."""

    enabled: bool
    block_tokens: int
    blocks: int


@dataclass(frozen=True)
class Arm:
    hits: float  # tokens, the counters' increase summed over the replicas
    queries: float
    requests: tuple[float, ...]  # user requests each replica answered
    spread: tuple[int, ...]  # per prompt: how many replicas received it (their own logs)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries


async def scrape(s: aiohttp.ClientSession, url: str) -> list[Any]:
    async with s.get(url + "/metrics") as r:
        assert r.status == 200, await r.text()
        text = await r.text()
    return [x for f in text_string_to_metric_families(text) for x in f.samples]


async def counters(s: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The counters read here, each summed over its label sets."""
    got = dict.fromkeys((HITS, QUERIES, SUCCESS), 0.0)
    for x in await scrape(s, url):
        if x.name in got:
            got[x.name] += x.value
    return got


async def cache_of(s: aiohttp.ClientSession, url: str) -> Cache:
    for x in await scrape(s, url):
        if x.name == "vllm:cache_config_info":
            labels = x.labels
            return Cache(labels["enable_prefix_caching"] == "True",
                         int(labels["block_size"]), int(labels["num_gpu_blocks"]))
    raise AssertionError(f"no vllm:cache_config_info on {url}/metrics")


def words(rng: random.Random, n: int) -> list[str]:
    """Pseudo-words of generated syllables: no two prompts share a first block."""
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
    return ["".join(rng.choice(onsets) + rng.choice("aeiou") for _ in range(rng.randint(1, 3)))
            for _ in range(n)]


async def system_prompt(s: aiohttp.ClientSession, url: str, rng: random.Random,
                        tokens: int) -> str:
    """A text of at least `tokens` of the replica's tokens (counted by its /tokenize)."""
    text: list[str] = []
    n = 0
    while n < tokens:
        text += words(rng, max(8, (tokens - n) // 3))  # ~2.5 tokens a word: no big overshoot
        n = await count_tokens(s, url, " ".join(text))
    return " ".join(text)


async def run_arm(reps: Replicas, seed: str, prefix_tokens: int, **cfg: Any) -> Arm:
    urls = [r.url for r in reps.all]
    async with aiohttp.ClientSession() as s:
        prompts = [await system_prompt(s, urls[0], random.Random(f"{seed}-{p}"), prefix_tokens)
                   for p in range(PREFIXES)]
        gateway = gateway_config(
            reps.urls, warmup=WARMUP, health={"interval": 0.5, "timeout": 5.0},
            outlier={"latency_ratio": 50.0}, ramp={"tolerance": 1.0, "max_ramp_time": 30},
            **cfg,
        )
        async with Gateway(gateway) as gw, openai.AsyncOpenAI(
            base_url=gw.url + "/v1", api_key="x", max_retries=0
        ) as client:
            await wait_all_ready(gw, timeout=180)
            before = [await counters(s, u) for u in urls]
            offsets = [r.log_path.stat().st_size for r in reps.all]
            sent = 0  # prompt tokens, as the replicas' answers count them
            for k in range(PREFIXES * USES):
                question = " ".join(words(random.Random(f"{seed}-q{k}"), 4))
                chat = await client.chat.completions.create(
                    model=SERVED, max_tokens=MAX_TOKENS, messages=[
                        {"role": "system", "content": prompts[k % PREFIXES]},
                        {"role": "user", "content": f"Question {k}: {question}?"}],
                    extra_headers={"X-Request-Id": f"{seed}-p{k % PREFIXES}-k{k}"},
                )  # fmt: skip
                assert chat.usage is not None
                assert chat.usage.prompt_tokens + MAX_TOKENS <= MAX_MODEL_LEN
                sent += chat.usage.prompt_tokens
            # the API server counts a request's stats as its engine reports them: a moment
            deadline = time.monotonic() + 10.0
            while True:
                after = [await counters(s, u) for u in urls]
                queries = sum(a[QUERIES] - b[QUERIES] for a, b in zip(after, before, strict=True))
                if queries >= sent or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
    # the counters measured these requests and nothing else (no warmup, no probe)
    assert queries == sent, f"queried {queries} prompt tokens, the requests had {sent}"
    # which replica each request reached, from the replica's own log (vLLM names a request
    # after the client's X-Request-Id, which the gateway passes on)
    where: dict[int, set[str]] = {}
    for r, offset in zip(reps.all, offsets, strict=True):
        for x in read_request_log(r.log_path, offset):
            if m := re.fullmatch(rf"{seed}-p(\d+)-k\d+", x.base):
                where.setdefault(int(m.group(1)), set()).add(r.name)
    return Arm(
        hits=sum(a[HITS] - b[HITS] for a, b in zip(after, before, strict=True)),
        queries=queries,
        requests=tuple(a[SUCCESS] - b[SUCCESS] for a, b in zip(after, before, strict=True)),
        spread=tuple(len(where.get(p, ())) for p in range(PREFIXES)),
    )


async def test_prefix_affinity_hits_vllms_prefix_cache_more_than_round_robin(
    vllm_replicas: Replicas,
) -> None:
    vllm_replicas.ensure_up()  # a failed test elsewhere must not fail this one
    async with aiohttp.ClientSession() as s:
        caches = [await cache_of(s, r.url) for r in vllm_replicas.all]
    for c in caches:
        assert c.enabled, "vLLM runs without its prefix cache"
        # the premise: a replica can hold every prompt of an arm at once (and one more
        # block per request, its unshared tail), whatever the gateway sends it
        assert PREFIXES * (PREFIX_BLOCKS + 1) <= c.blocks, c
    block = caches[0].block_tokens
    prefix_tokens = PREFIX_BLOCKS * block + 16  # the first PREFIX_BLOCKS blocks all shared

    t0 = time.monotonic()
    rr = await run_arm(vllm_replicas, "rr", prefix_tokens, strategy="round_robin")
    aff = await run_arm(
        vllm_replicas, "aff", prefix_tokens,
        routing={"prefix": {"enabled": True,
                            "replica_cache_tokens": caches[0].blocks * block}},
    )  # fmt: skip
    TIMINGS["prefix cache: both arms"] = time.monotonic() - t0
    FIGURES["prefix-cache hit rate (vLLM's counters)"] = (
        f"round robin {rr.hit_rate:.1%} ({rr.hits:.0f} of {rr.queries:.0f} prompt tokens, "
        f"requests per replica {rr.requests[0]:.0f}/{rr.requests[1]:.0f}), prefix affinity "
        f"{aff.hit_rate:.1%} ({aff.hits:.0f} of {aff.queries:.0f}, "
        f"{aff.requests[0]:.0f}/{aff.requests[1]:.0f}); {PREFIXES} system prompts of "
        f"{PREFIX_BLOCKS}+ blocks of {block} tokens, {USES} uses each"
    )
    n = PREFIXES * USES
    assert sum(rr.requests) == n and sum(aff.requests) == n
    # round robin spread every prompt over both replicas: each replica computed each one;
    # affinity kept each prompt on the replica that had it
    assert rr.requests == (n / 2, n / 2)
    assert rr.spread == (2,) * PREFIXES, rr
    assert aff.spread == (1,) * PREFIXES, aff
    # expected 3/4 against 2/4 of the shared part (~0.22 apart here): a clear margin
    assert aff.hit_rate > rr.hit_rate + 0.1, (rr, aff)
