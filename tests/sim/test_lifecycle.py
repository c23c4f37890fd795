"""Loading, restart, cold start, warmup accounting, queueing and client disconnects."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest
from sim_helpers import FAST, scrape, vllm, wait_until

from warmgw.sim import SimConfig, SimReplica

COLD = dataclasses.replace(
    FAST, cold_shape_penalty=0.06, cold_batch_penalty=0.03, prompt_buckets=(16, 256)
)
SHORT = "a b c"  # bucket 16
LONG = " ".join(["w"] * 100)  # bucket 256


async def complete(
    session: aiohttp.ClientSession, url: str, prompt: str, warmup: bool = False, **extra: object
) -> int:
    headers = {"X-Warmgw-Warmup": "1"} if warmup else {}
    body = {"prompt": prompt, "max_tokens": 2, **extra}
    async with session.post(url + "/v1/completions", json=body, headers=headers) as r:
        await r.read()
        return r.status


async def test_cold_penalties_and_warmup_accounting(session: aiohttp.ClientSession) -> None:
    async with SimReplica(COLD) as r:
        assert await complete(session, r.url, SHORT) == 200  # cold: shape 16 + batch 1
        assert await complete(session, r.url, LONG, warmup=True) == 200  # warms shape 256
        assert await complete(session, r.url, LONG) == 200  # warm
        assert await complete(session, r.url, SHORT) == 200  # warm
        s = r.stats
        assert (s.user_requests, s.warmup_requests) == (3, 1)
        assert (s.user_cold_hits, s.warmup_cold_hits) == (1, 1)
        log = list(r.log)
        assert [(x.warmup, x.paid_cold, x.prompt_tokens) for x in log] == [
            (False, True, 3),
            (True, True, 100),
            (False, False, 100),
            (False, False, 3),
        ]
        ttft = [x.ttft or 0.0 for x in log]
        assert ttft[0] >= 0.09  # shape + batch penalty
        assert ttft[1] >= 0.06  # shape penalty only
        assert ttft[2] < ttft[0] and ttft[3] < ttft[0]  # warm: no penalty (~2 ms)
        assert all(x.status == 200 and x.outcome == "ok" for x in log)
        assert r.process.cold.warm_prompt_buckets == {16, 256}


async def test_concurrency_warms_batch_buckets(session: aiohttp.ClientSession) -> None:
    async with SimReplica(dataclasses.replace(COLD, max_running=4)) as r:
        statuses = await asyncio.gather(
            *(complete(session, r.url, SHORT, warmup=True, max_tokens=20) for _ in range(3))
        )
        assert statuses == [200] * 3
        assert r.process.cold.warm_batch_buckets == {1, 2, 4}  # running 1, 2, 3 -> 1, 2, 4
        assert r.stats.warmup_cold_hits == 3
        assert await complete(session, r.url, SHORT) == 200
        assert r.stats.user_cold_hits == 0


async def test_loading_503_then_health(session: aiohttp.ClientSession) -> None:
    async with SimReplica(dataclasses.replace(FAST, load_time=0.3)) as r:
        async with session.get(r.url + "/health") as resp:
            assert resp.status == 503
        assert await complete(session, r.url, SHORT) == 503
        assert not r.loaded
        async with asyncio.timeout(2):
            await r.wait_loaded()
        async with session.get(r.url + "/health") as resp:
            assert resp.status == 200


async def test_refuse_while_loading_like_real_vllm(session: aiohttp.ClientSession) -> None:
    cfg = dataclasses.replace(FAST, load_time=0.3, refuse_while_loading=True)
    async with SimReplica(cfg) as r:
        assert r.port != 0
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(r.url + "/health")
        async with asyncio.timeout(2):
            await r.wait_loaded()
        async with session.get(r.url + "/health") as resp:
            assert resp.status == 200


async def test_restart_aborts_reloads_and_is_cold_again(session: aiohttp.ClientSession) -> None:
    async with SimReplica(dataclasses.replace(COLD, load_time=0.3)) as r:
        await r.wait_loaded()
        assert await complete(session, r.url, SHORT) == 200
        before = await scrape(session, r.url)
        assert before[vllm("vllm:prompt_tokens_total")] == 3
        body = {"prompt": SHORT, "max_tokens": 500, "stream": True}
        async with session.post(r.url + "/v1/completions", json=body) as stream:
            await stream.content.readline()  # first event arrived: it is running
            assert r.process.scheduler.running == 1
            await r.restart()
            with pytest.raises(aiohttp.ClientPayloadError):
                await stream.read()
        async with session.get(r.url + "/health") as resp:
            assert resp.status == 503
        await r.wait_loaded()
        after = await scrape(session, r.url)
        assert after["process_start_time_seconds"] > before["process_start_time_seconds"]
        assert after[vllm("vllm:prompt_tokens_total")] == 0  # a new process
        assert r.process.cold.warm_prompt_buckets == set()
        assert await complete(session, r.url, SHORT) == 200
        assert r.log[-1].paid_cold and r.stats.user_cold_hits == 2
        assert r.stats.restarts == 1
        assert [x.outcome for x in r.log] == ["ok", "disconnected", "ok"]


async def test_queueing_shows_in_metrics(session: aiohttp.ClientSession) -> None:
    cfg = dataclasses.replace(FAST, max_running=2, itl=0.01)
    async with SimReplica(cfg) as r:
        tasks = [
            asyncio.create_task(complete(session, r.url, SHORT, max_tokens=25)) for _ in range(5)
        ]
        await wait_until(lambda: r.process.scheduler.waiting == 3)
        m = await scrape(session, r.url)
        assert m[vllm("vllm:num_requests_running")] == 2
        assert m[vllm("vllm:num_requests_waiting")] == 3
        assert m[vllm("vllm:kv_cache_usage_perc")] > 0
        assert await asyncio.gather(*tasks) == [200] * 5
        m = await scrape(session, r.url)
        assert m[vllm("vllm:num_requests_running")] == 0
        assert m[vllm("vllm:num_requests_waiting")] == 0
        assert m[vllm("vllm:kv_cache_usage_perc")] == 0
        ttfts = sorted(x.ttft or 0 for x in r.log)
        assert ttfts[-1] > 0.2  # the last ones waited for two earlier rounds


async def test_disconnect_mid_stream_frees_the_slot(session: aiohttp.ClientSession) -> None:
    async with SimReplica(dataclasses.replace(FAST, itl=0.005)) as r:
        body = {"prompt": SHORT, "max_tokens": 1000, "stream": True}
        async with session.post(r.url + "/v1/completions", json=body) as resp:
            for _ in range(3):
                await resp.content.readuntil(b"\n\n")
            assert r.process.scheduler.running == 1
            resp.close()  # drop the connection mid-stream
        await wait_until(lambda: r.process.scheduler.running == 0)
        await wait_until(lambda: len(r.log) == 1)
        assert r.log[0].outcome == "disconnected"
        m = await scrape(session, r.url)
        assert m[vllm("vllm:num_requests_running")] == 0
        assert 3 <= m[vllm("vllm:generation_tokens_total")] < 1000


async def test_disconnect_while_queued_leaves_the_queue(session: aiohttp.ClientSession) -> None:
    async with SimReplica(dataclasses.replace(FAST, max_running=1, itl=0.01)) as r:
        first = asyncio.create_task(complete(session, r.url, SHORT, max_tokens=30))
        await wait_until(lambda: r.process.scheduler.running == 1)
        queued = asyncio.create_task(complete(session, r.url, SHORT, max_tokens=30))
        await wait_until(lambda: r.process.scheduler.waiting == 1)
        queued.cancel()
        await wait_until(lambda: r.process.scheduler.waiting == 0)
        assert r.process.scheduler.running == 1
        assert await first == 200
        await wait_until(lambda: r.process.scheduler.running == 0)
        with pytest.raises(asyncio.CancelledError):
            await queued


async def test_restart_via_http_control_route(session: aiohttp.ClientSession) -> None:
    async with SimReplica(SimConfig()) as r:
        old = r.process_start_time
        async with session.post(r.url + "/sim/restart") as resp:
            assert resp.status == 200
            new = (await resp.json())["process_start_time"]
        assert new == r.process_start_time and new > old
        async with session.get(r.url + "/sim/stats") as resp:
            stats = await resp.json()
        assert stats["restarts"] == 1 and stats["warm_prompt_buckets"] == []


async def test_drain_finishes_what_it_has_and_accepts_nothing_new() -> None:
    """As uvicorn on SIGTERM: the stream under way ends whole while a new connection is
    refused; a request past the drain timeout is cut (and counted)."""
    slow = dataclasses.replace(FAST, itl=0.02)
    async with SimReplica(slow) as r, aiohttp.ClientSession() as s:
        body = {"prompt": SHORT, "max_tokens": 15, "stream": True}
        async with s.post(r.url + "/v1/completions", json=body) as resp:
            first = await resp.content.readline()
            drain = asyncio.create_task(r.drain(5.0))
            await asyncio.sleep(0.05)
            assert not drain.done()  # it waits for the stream
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as other:
                    await other.get(r.url + "/health")
            rest = await resp.read()
        assert first.startswith(b"data: ") and rest.rstrip().endswith(b"data: [DONE]")
        assert await asyncio.wait_for(drain, 2.0) == 0
    async with SimReplica(slow) as r, aiohttp.ClientSession() as s:
        body = {"prompt": SHORT, "max_tokens": 50}
        pending = asyncio.create_task(s.post(r.url + "/v1/completions", json=body))
        await wait_until(lambda: r.process.scheduler.running == 1)
        assert await r.drain(0.1) == 1
        with pytest.raises(aiohttp.ClientError):
            await pending
