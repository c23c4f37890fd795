"""The prefix index remembers of each replica what its cache can hold: the block count x
block size that vLLM's `vllm:cache_config_info` exports, read where the supervisor scrapes
/metrics, turned into chunks of prompt bytes (times index_headroom, 1.25); config
(replica_cache_tokens) when the replica does not say."""

from __future__ import annotations

import aiohttp
import pytest

from tests.helpers import gateway_config, wait_all_ready, wait_for
from warmgw.app import Gateway
from warmgw.core.affinity import Affinity
from warmgw.core.prefix import PrefixParams, RoutingParams
from warmgw.probe import engine_gauges
from warmgw.sim import SimConfig, SimFleet

# as vLLM 0.32 writes it (v1 loggers: CacheConfig's fields as labels), two engines
VLLM_TEXT = b"""\
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",cache_dtype="auto",enable_prefix_caching="True",\
engine="0",num_cpu_blocks="None",num_gpu_blocks="16",prefix_caching_hash_algo="sha256"} 1.0
vllm:cache_config_info{block_size="128",cache_dtype="auto",enable_prefix_caching="True",\
engine="1",num_cpu_blocks="None",num_gpu_blocks="16",prefix_caching_hash_algo="sha256"} 1.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
"""


@pytest.mark.parametrize(("text", "tokens"), [
    (VLLM_TEXT, 2 * 16 * 128),
    (b'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1.0\n', None),
    (b'vllm:cache_config_info{num_gpu_blocks="7",block_size="32",engine="0"} 1.0\n', 224),
    (b"vllm:num_requests_waiting 1.0\n", None),
])
def test_cache_tokens_are_read_from_cache_config_info(text: bytes, tokens: int | None) -> None:
    assert engine_gauges(text).get("cache_tokens") == tokens


@pytest.mark.parametrize(("reported", "configured", "chunks"), [
    (4096, 0, 4096 * 4 // 256 * 5 // 4),  # the replica's own figure, x index_headroom
    (4096, 100000, 4096 * 4 // 256 * 5 // 4),  # wins over config
    (0, 1024, 1024 * 4 // 256 * 5 // 4),  # config when the replica does not say
    (0, 0, 16384),  # neither: replica_chunks
])
def test_index_capacity_follows_the_replica_then_config(reported: int, configured: int,
                                                        chunks: int) -> None:
    aff = Affinity(RoutingParams(PrefixParams(enabled=True, replica_cache_tokens=configured)))
    assert aff.capacity(256 / 4.0, reported) == chunks  # 4 bytes a token, 256 a chunk


def test_tokens_per_chunk_are_learned_from_the_replicas_counts() -> None:
    aff = Affinity(RoutingParams(PrefixParams(enabled=True)))
    assert aff.tokens_per_chunk("m", 8.0) == 32.0  # the body's ratio until learned
    for _ in range(200):  # prompts of 2,688 bytes (10.5 chunks of 256), 378 tokens
        aff.learn("m", 2688, 378)
    assert aff.tokens_per_chunk("m", 8.0) == pytest.approx(36.0, rel=0.01)
    aff.learn("m", 300, 10_000)  # under two chunks: too short to say
    assert aff.tokens_per_chunk("m", 8.0) == pytest.approx(36.0, rel=0.01)


@pytest.mark.timeout(60)
async def test_the_index_holds_no_more_of_a_replica_than_its_cache_and_headroom() -> None:
    sim = SimConfig(ttft_base=0.001, itl=0.001, prefix_block_tokens=16, prefix_cache_blocks=32)
    async with SimFleet(sim, replicas=2) as fleet:
        cfg = gateway_config(fleet.urls, routing={"prefix": {"enabled": True}})
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await wait_all_ready(gw)
            eps = gw.registry.endpoints
            await wait_for(lambda: all(e.cache_tokens for e in eps.values()), 5, "cache size")
            assert {e.cache_tokens for e in eps.values()} == {32 * 16}
            aff = gw.router.affinity
            assert aff is not None
            sent = 0
            for p in range(40):  # 40 distinct ~1.4 KB prompts: far more than 512 tokens
                body = {"model": "tiny", "max_tokens": 1, "messages": [
                    {"role": "user", "content": " ".join(f"p{p}w{i}" for i in range(200))}]}
                async with s.post(gw.url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
                sent += len(body["messages"][0]["content"]) // 256
            tpc = aff.tokens_per_chunk("tiny", gw.router.ratios.ratios["tiny"])
            held = {n: len(lru) for n, lru in aff.prefix._lru.items()}
    cap = int(32 * 16 * aff.params.prefix.index_headroom / tpc)
    print(f"tokens/chunk {tpc:.2f}: index capacity {cap} chunks per replica, holds {held}, "
          f"{sent} chunks sent")
    assert sent > 4 * cap  # without the replica's figure the index would keep them all
    assert held and all(0 < n <= cap for n in held.values())
