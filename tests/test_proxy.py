"""The gateway over real sockets, driven by the official openai client."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import openai
import pytest

from tests.helpers import gateway_config, wait_all_ready, wait_for
from warmgw.app import Gateway
from warmgw.sim import SimConfig, SimFleet


@pytest.fixture
async def fleet():
    async with SimFleet(SimConfig(ttft_base=0.002, itl=0.001), replicas=2) as f:
        yield f


@pytest.fixture
async def gw(fleet):
    async with Gateway(gateway_config(fleet.urls)) as g:
        await wait_all_ready(g)
        yield g


async def test_chat_and_completions_through_the_gateway(gw):
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x")
    async with client:
        chat = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi there"}], max_tokens=5
        )
        assert chat.choices[0].message.content
        assert chat.usage is not None and chat.usage.completion_tokens == 5
        comp = await client.completions.create(model="tiny", prompt="hello world", max_tokens=3)
        assert comp.usage is not None and comp.usage.completion_tokens == 3
        models = await client.models.list()
        assert [m.id for m in models.data] == ["tiny"]
        assert models.data[0].model_extra["max_model_len"] == 4096  # learnt from replicas


async def test_streams_pass_through_with_usage(gw):
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x")
    async with client:
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
            stream=True, stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert text
        assert usage is not None and usage.completion_tokens == 6
        cstream = await client.completions.create(
            model="tiny", prompt="a b c", max_tokens=4, stream=True
        )
        pieces = [c.choices[0].text async for c in cstream if c.choices]
        assert len(pieces) == 4


async def test_sync_client_works(gw):
    def call() -> list[str]:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x")
        with client:
            r = client.completions.create(model="tiny", prompt="x", max_tokens=2)
            s = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "x"}], stream=True
            )
            return [r.choices[0].text, *(c.choices[0].delta.content or "" for c in s if c.choices)]

    texts = await asyncio.to_thread(call)  # the gateway's loop keeps running meanwhile
    assert texts[0] and "".join(texts[1:])


async def test_unknown_model_is_404_model_not_found(gw):
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    async with client:
        with pytest.raises(openai.NotFoundError) as e:
            await client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_bad_inputs_get_clear_errors(gw):
    async with aiohttp.ClientSession() as s:
        js = {"Content-Type": "application/json"}
        async with s.post(gw.url + "/v1/completions", data=b"{not json", headers=js) as r:
            assert r.status == 400
            assert "not valid JSON" in (await r.json())["error"]["message"]
        async with s.post(gw.url + "/v1/completions", data=b"[1, 2]", headers=js) as r:
            assert r.status == 400
        big = json.dumps({"model": "tiny", "prompt": "x" * (9 * 1024 * 1024)})
        async with s.post(gw.url + "/v1/completions", data=io.BytesIO(big.encode()),
                          headers=js) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"
        # the gateway still serves afterwards
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        async with s.post(gw.url + "/v1/completions", json=body) as r:
            assert r.status == 200


async def test_request_id_generated_and_passed_back(gw):
    async with aiohttp.ClientSession() as s:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        async with s.post(gw.url + "/v1/completions", json=body,
                          headers={"X-Request-Id": "abc"}) as r:
            assert r.headers["X-Request-Id"] == "abc"
            assert (await r.json())["id"] == "cmpl-abc"
        async with s.post(gw.url + "/v1/completions", json=body) as r:
            assert len(r.headers["X-Request-Id"]) >= 16


async def test_no_routable_replica_is_503_with_retry_after():
    cfg = gateway_config(["http://127.0.0.1:9"], replicas=[
        {"name": "dead", "url": "http://127.0.0.1:9", "model": "tiny"}])
    async with Gateway(cfg) as g, aiohttp.ClientSession() as s:
        body = {"model": "tiny", "prompt": "x"}
        async with s.post(g.url + "/v1/completions", json=body) as r:
            assert r.status == 503
            assert r.headers["Retry-After"]
            assert (await r.json())["error"]["code"] == "no_replica"
        async with s.get(g.url + "/readyz") as r:
            assert r.status == 503
        async with s.get(g.url + "/healthz") as r:
            assert r.status == 200


async def test_a_removed_replica_leaves_nothing_behind(fleet):
    async with Gateway(gateway_config(fleet.urls)) as g, aiohttp.ClientSession() as s:
        await wait_all_ready(g)
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        for _ in range(10):  # both replicas serve some
            async with s.post(g.url + "/v1/completions", json=body) as r:
                assert r.status == 200
        assert set(g.replicas.records) == {"r0", "r1"}
        r1_address = g.proxy._address(g.registry.endpoints["r1"].url)[:2]
        assert r1_address in g.pool.idle  # a kept-alive connection to r1
        g.static.reload(gateway_config(fleet.urls[:1]))
        await wait_for(lambda: "r1" not in g.registry.endpoints, 5, "r1 to be gone")
        await wait_for(lambda: set(g.replicas.records) == {"r0"}, 5, "r1's record dropped")
        assert r1_address not in g.pool.idle  # its pooled connections closed
        assert all(not e.tickets for e in g.registry.endpoints.values())


async def test_out_of_file_descriptors_is_a_503_and_no_replica_is_blamed(gw, fleet,
                                                                          monkeypatch):
    """EMFILE on connect is the gateway's shortage: the client gets a 503 to retry, and
    the replicas stay in rotation (they used to be ejected as 'down')."""
    import errno

    from warmgw.probe import out_of_fds

    loop = asyncio.get_running_loop()
    pool = gw.proxy.pool
    await pool.close()  # no kept connection: the next request must connect
    pool.closed = False

    replicas = {int(u.rsplit(":", 1)[1]) for u in fleet.urls}
    connect = loop.create_connection

    async def no_fds(factory, host=None, port=None, **k):  # for the replicas' ports only
        if port in replicas:
            raise OSError(errno.EMFILE, "Too many open files")
        return await connect(factory, host, port, **k)

    monkeypatch.setattr(loop, "create_connection", no_fds)
    async with aiohttp.ClientSession() as s:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        async with s.post(gw.url + "/v1/completions", json=body) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            err = (await r.json())["error"]
            assert err["code"] == "gateway_overloaded" and "file descriptors" in err["message"]
    monkeypatch.undo()
    assert all(e.state.value == "ready" for e in gw.registry.endpoints.values())
    assert out_of_fds(aiohttp.ClientConnectorError(
        None, OSError(errno.EMFILE, "Too many open files")))  # type: ignore[arg-type]
    assert not out_of_fds(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
