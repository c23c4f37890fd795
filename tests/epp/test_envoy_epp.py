"""warmgw as the endpoint picker behind a real Envoy (ext_proc, full-duplex bodies, an
original-destination cluster that goes where x-gateway-destination-endpoint says), with
simulated replicas on their own loopback addresses behind it. What is checked is what a
user and the replicas see: OpenAI answers through Envoy, and which replica served each
user request (the replicas' own request logs, warmup=False)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc  # type: ignore[import-untyped]
import openai
import pytest

from tests.epp.conftest import ENVOY
from tests.epp.envoy import Envoy, config
from tests.helpers import gateway_config, observe, wait_all_ready, wait_for
from warmgw.app import Gateway
from warmgw.core.lifecycle import State
from warmgw.core.model import EndpointSpec
from warmgw.core.registry import Transition
from warmgw.epp import wire
from warmgw.sim import SimConfig, SimFleet, SimReplica

FAST = SimConfig(ttft_base=0.002, itl=0.001)


def users(replica: SimReplica) -> int:
    return sum(not r.warmup for r in replica.log)


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(FAST, replicas=2, distinct_hosts=True, host="127.0.0.21") as f:
        yield f


@pytest.fixture
async def stack(fleet: SimFleet, tmp_path: Path) -> AsyncIterator[tuple[Gateway, Envoy]]:
    assert ENVOY is not None
    cfg = gateway_config(fleet.urls, epp={"listen": {"port": 0}})
    async with Gateway(cfg) as gw:
        await wait_all_ready(gw)
        async with Envoy(ENVOY, config(gw.epp_port), tmp_path) as envoy:
            yield gw, envoy


async def test_openai_client_through_envoy(stack: tuple[Gateway, Envoy], fleet: SimFleet) -> None:
    gw, envoy = stack
    client = openai.AsyncOpenAI(base_url=envoy.url + "/v1", api_key="x", max_retries=0)
    async with client:
        chat = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi there"}], max_tokens=5)
        assert chat.choices[0].message.content
        assert chat.usage is not None and chat.usage.completion_tokens == 5
        comp = await client.completions.create(model="tiny", prompt="once upon", max_tokens=3)
        assert comp.choices[0].text and comp.usage is not None
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
            stream=True, stream_options={"include_usage": True})
        text, usage = "", None
        async for ev in stream:
            if ev.choices:
                text += ev.choices[0].delta.content or ""
            usage = ev.usage or usage
        assert text and usage is not None and usage.completion_tokens == 6
        cstream = await client.completions.create(model="tiny", prompt="abc", max_tokens=4,
                                                  stream=True)
        pieces = [c.choices[0].text async for c in cstream if c.choices]
        assert "".join(pieces)
    assert sum(users(r) for r in fleet.replicas) == 4
    # every ticket was closed, and the answers were counted against the replicas
    assert all(e.inflight == 0 for e in gw.registry.endpoints.values())
    counted = {k: v for k, v in gw.router.stats.requests.items() if k[1]}
    assert sum(v for (_, _, _, status), v in counted.items() if status == 200) == 4, counted


async def test_refusals_come_back_through_envoy(stack: tuple[Gateway, Envoy]) -> None:
    gw, envoy = stack
    client = openai.AsyncOpenAI(base_url=envoy.url + "/v1", api_key="x", max_retries=0)
    async with client:
        with pytest.raises(openai.NotFoundError) as nf:
            await client.completions.create(model="nope", prompt="x", max_tokens=2)
        assert nf.value.body["code"] == "model_not_found"  # type: ignore[index]
    async with aiohttp.ClientSession() as s:
        async with s.post(envoy.url + "/v1/chat/completions", data=b"{not json",
                          headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_json"
        async with s.post(envoy.url + "/v1/completions", data=b"model=tiny",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 415
    assert all(e.inflight == 0 for e in gw.registry.endpoints.values())


async def test_nothing_routable_is_503_with_retry_after_and_health_says_so(
        tmp_path: Path) -> None:
    assert ENVOY is not None
    # a replica that names its model but is not there: the model is known, nothing routes
    cfg = gateway_config([], epp={"listen": {"port": 0}},
                         replicas=[{"url": "http://127.0.0.29:9", "model": "tiny"}])
    async with Gateway(cfg) as gw, Envoy(ENVOY, config(gw.epp_port), tmp_path) as envoy:
        assert await health(gw.epp_port, "") == "NOT_SERVING"
        assert await health(gw.epp_port, "liveness") == "SERVING"
        async with aiohttp.ClientSession() as s:
            async with s.post(envoy.url + "/v1/completions",
                              json={"model": "tiny", "prompt": "x", "max_tokens": 2}) as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "2"
                assert (await r.json())["error"]["code"] == "no_replica"


async def health(port: int, service: str) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=wire.HealthRequest.SerializeToString,
                               response_deserializer=wire.HealthResponse.FromString)
        resp = await check(wire.HealthRequest(service=service))
        return str(wire.HealthResponse.DESCRIPTOR.enum_types_by_name["ServingStatus"]
                   .values_by_number[resp.status].name)


async def test_health_serving_once_a_model_routes(stack: tuple[Gateway, Envoy]) -> None:
    gw, _ = stack
    for service in ("", "readiness", "liveness", "envoy.service.ext_proc.v3.ExternalProcessor"):
        assert await health(gw.epp_port, service) == "SERVING"


async def test_a_client_that_leaves_mid_stream_is_counted_and_frees_the_replica(
        stack: tuple[Gateway, Envoy], fleet: SimFleet) -> None:
    gw, envoy = stack
    client = openai.AsyncOpenAI(base_url=envoy.url + "/v1", api_key="x", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2000,
            stream=True)
        async for _ in stream:
            break
        await stream.close()
    await wait_for(lambda: all(e.inflight == 0 for e in gw.registry.endpoints.values()),
                   10, "the ticket to be closed")
    left = sum(v for (_, rep, _, status), v in gw.router.stats.requests.items()
               if rep and status == 499)
    assert left == 1


async def load(url: str, stop: asyncio.Event, errors: list[str], workers: int = 4) -> None:
    """Users through Envoy until stop: chat and completions, streamed and not."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

    async def user(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                if (i + n) % 2:
                    s = await client.chat.completions.create(
                        model="tiny", messages=[{"role": "user", "content": f"q {n}"}],
                        max_tokens=4, stream=True)
                    async for _ in s:
                        pass
                else:
                    await client.completions.create(model="tiny", prompt=f"p {n}", max_tokens=3)
            except openai.APIError as e:
                errors.append(repr(e))

    async with client:
        await asyncio.gather(*(user(i) for i in range(workers)))


@pytest.mark.timeout(120)
async def test_a_replica_joining_under_load_gets_no_user_request_before_it_is_warm(
        tmp_path: Path) -> None:
    assert ENVOY is not None
    async with SimFleet(FAST, replicas=3, distinct_hosts=True, host="127.0.0.31") as fleet:
        r0, r1, r2 = fleet.replicas
        cfg = gateway_config({"r0": r0.url, "r1": r1.url}, epp={"listen": {"port": 0}})
        async with Gateway(cfg) as gw, Envoy(ENVOY, config(gw.epp_port), tmp_path) as envoy:
            await wait_all_ready(gw)
            warm_at: list[float] = []

            def seen(t: Transition) -> None:
                if t.name == "r2" and t.frm is State.WARMING and t.to is State.RAMPING:
                    warm_at.append(time.monotonic())  # the replicas' clock too

            unobserve = observe(gw.registry, seen)
            stop, errors = asyncio.Event(), []
            users_task = asyncio.create_task(load(envoy.url, stop, errors))
            try:
                await wait_for(lambda: users(r0) + users(r1) >= 20, 30, "traffic")
                gw.static.add(EndpointSpec("r2", r2.url, "blue"))
                await wait_for(lambda: users(r2) >= 10, 60, "user requests on r2")
            finally:
                stop.set()
                await users_task
                unobserve()
            assert not errors, errors[:5]
            assert warm_at, "r2 never finished its warmup"
            early = [r for r in r2.log if not r.warmup and r.start < warm_at[0]]
            assert not early, f"{len(early)} user requests reached r2 while it warmed"
            assert any(r.warmup and r.start < warm_at[0] for r in r2.log)
            assert all(e.inflight == 0 for e in gw.registry.endpoints.values())


async def test_buffered_request_and_streamed_response_modes(fleet: SimFleet,
                                                            tmp_path: Path) -> None:
    """The other body modes: the whole request body in one message (headers answered at
    once, the destination on the body's answer), the response passed on by Envoy itself
    chunk by chunk."""
    assert ENVOY is not None
    cfg = gateway_config(fleet.urls, epp={"listen": {"port": 0}})
    async with Gateway(cfg) as gw:
        await wait_all_ready(gw)
        envoy_cfg = config(gw.epp_port, request_body="BUFFERED", response_body="STREAMED")
        async with Envoy(ENVOY, envoy_cfg, tmp_path) as envoy:
            client = openai.AsyncOpenAI(base_url=envoy.url + "/v1", api_key="x", max_retries=0)
            async with client:
                chat = await client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
                assert chat.usage is not None and chat.usage.completion_tokens == 5
                stream = await client.completions.create(model="tiny", prompt="abc",
                                                         max_tokens=4, stream=True)
                assert "".join([c.choices[0].text async for c in stream if c.choices])
        assert sum(users(r) for r in fleet.replicas) == 2
        assert all(e.inflight == 0 for e in gw.registry.endpoints.values())
