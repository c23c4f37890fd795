"""Fault injection: through SimReplica methods and the POST /sim/faults control route."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from sim_helpers import FAST, wait_until

from warmgw.sim import SimReplica

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CHAT = {"messages": USER, "max_tokens": 4}


async def post(session: aiohttp.ClientSession, url: str, path: str, body: object) -> int:
    async with session.post(url + path, json=body) as r:
        await r.read()
        return r.status


async def test_error_rate_one_gives_openai_shaped_500(replica: SimReplica) -> None:
    replica.set_faults(error_rate=1.0)
    async with AsyncOpenAI(base_url=replica.url + "/v1", api_key="x", max_retries=0) as c:
        with pytest.raises(openai.InternalServerError) as info:
            await c.chat.completions.create(model="tiny", messages=USER)
    assert info.value.status_code == 500
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "InternalServerError"
    assert replica.stats.injected_errors == 1
    assert replica.log[-1].status == 500 and replica.log[-1].outcome == "error"
    replica.clear_faults()
    async with aiohttp.ClientSession() as s:
        assert await post(s, replica.url, "/v1/chat/completions", CHAT) == 200


async def test_error_rate_is_seeded(session: aiohttp.ClientSession) -> None:
    async def statuses(seed: int) -> list[int]:
        async with SimReplica(dataclasses.replace(FAST, seed=seed)) as r:
            r.set_faults(error_rate=0.5)
            return [await post(session, r.url, "/v1/chat/completions", CHAT) for _ in range(24)]

    a = await statuses(7)
    assert a == await statuses(7)
    assert a != await statuses(8)
    assert {200, 500} == set(a)


async def test_hang_sends_nothing_until_cleared(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    replica.set_faults(hang=True)
    streaming = {**CHAT, "stream": True}
    with pytest.raises(TimeoutError):  # not even the response headers arrive
        async with asyncio.timeout(0.2):
            await session.post(replica.url + "/v1/chat/completions", json=streaming)
    pending = asyncio.create_task(post(session, replica.url, "/v1/chat/completions", CHAT))
    await asyncio.sleep(0.1)
    assert not pending.done()
    replica.set_faults(hang=False)
    assert await pending == 200
    await wait_until(lambda: replica.process.scheduler.running == 0)


async def test_slow_drip_spaces_sse_chunks(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    replica.set_faults(slow_drip=0.05)
    arrivals: list[float] = []
    body = {**CHAT, "stream": True}
    async with session.post(replica.url + "/v1/chat/completions", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 1 + 4 + 1  # role, 4 tokens, [DONE]
    gaps = [b - a for a, b in itertools.pairwise(arrivals[1:5])]  # between token chunks
    assert len(gaps) == 3 and sum(gaps) >= 0.13  # 3 x 0.05 s, minus read-side jitter
    await wait_until(lambda: len(replica.log) == 1)
    assert replica.log[0].duration >= 0.15


async def test_drop_mid_stream_aborts_connection(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    replica.set_faults(drop_mid_stream=2)
    events: list[bytes] = []
    body = {**CHAT, "stream": True}
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(replica.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b"data: "):
                    events.append(line)
    assert len(events) == 2  # role chunk and one token, then the connection died
    assert not any(b"[DONE]" in e or b'"finish_reason":"length"' in e for e in events)
    await wait_until(lambda: replica.process.scheduler.running == 0)
    await wait_until(lambda: len(replica.log) == 1)
    assert replica.log[0].outcome == "dropped"


async def test_drop_on_non_stream_request(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    replica.set_faults(drop_mid_stream=0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, replica.url, "/v1/chat/completions", CHAT)
    await wait_until(lambda: replica.process.scheduler.running == 0)


async def test_refuse_and_resume_on_same_port(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    port = replica.port
    await replica.stop_listening()
    assert not replica.listening
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.get(replica.url + "/health")
    await replica.resume_listening()
    assert replica.port == port
    async with session.get(replica.url + "/health") as r:
        assert r.status == 200


async def test_unhealthy_fails_health_but_serves(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    replica.set_faults(unhealthy=True)
    async with session.get(replica.url + "/health") as r:
        assert r.status == 503
    assert await post(session, replica.url, "/v1/chat/completions", CHAT) == 200


async def test_http_control_route(replica: SimReplica, session: aiohttp.ClientSession) -> None:
    async with session.post(replica.url + "/sim/faults", json={"error_rate": 1.0}) as r:
        assert r.status == 200
        assert (await r.json())["error_rate"] == 1.0
    assert await post(session, replica.url, "/v1/completions", {"prompt": "x"}) == 500
    async with session.post(replica.url + "/sim/faults", json={"nope": 1}) as r:
        assert r.status == 400
        assert "nope" in (await r.json())["error"]["message"]
    async with session.post(replica.url + "/sim/faults", json={"error_rate": 0}) as r:
        assert (await r.json())["error_rate"] == 0
    assert await post(session, replica.url, "/v1/completions", {"prompt": "x"}) == 200


async def test_http_refuse_for_then_back(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    async with session.post(replica.url + "/sim/faults", json={"refuse_for": 0.5}) as r:
        assert r.status == 200 and (await r.json())["refuse"] is True
    async with aiohttp.ClientSession() as fresh:  # no pooled connection to reuse
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh.get(replica.url + "/health")
        async with asyncio.timeout(2):
            await replica.wait_loaded()
        async with fresh.get(replica.url + "/health") as r:
            assert r.status == 200
