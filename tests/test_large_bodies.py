"""Non-streamed answers larger than the upstream client's former read-ahead (256 KiB) and
the socket buffers, over real sockets: an embeddings answer of a few MB
reaches the client whole and at once, with a Content-Length or chunked; a replica that
stops in the middle of one is cut by the read timeout (504); the gateway serves on after
each. The Content-Length answer used to hang: the proxy reads it whole, and reading
paused at READ_AHEAD for a take that only comes at its end (and the read timeout skipped
the paused connection)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import wait_all_ready
from tests.reliability.common import quick_config
from warmgw.app import Gateway

pytestmark = pytest.mark.timeout(60)

READ_TIMEOUT = 1.0
READ_AHEAD = 256 * 1024  # where reading used to pause, for a take that never came
MODELS = {"object": "list", "data": [{"id": "tiny", "object": "model", "max_model_len": 4096}]}


def embeddings(vectors: int, dim: int = 4096) -> bytes:
    """An OpenAI embeddings answer as vLLM writes it (usage last): ~80 KB a vector."""
    rng = random.Random(7)
    data = [{"object": "embedding", "index": i, "embedding": [rng.uniform(-1, 1)
                                                                 for _ in range(dim)]}
            for i in range(vectors)]
    return json.dumps({"id": "embd-1", "object": "list", "model": "tiny", "data": data,
                       "usage": {"prompt_tokens": 9 * vectors,
                                 "total_tokens": 9 * vectors}}).encode()


BIG = embeddings(60)  # ~5 MB


class BigReplica:
    """An aiohttp replica: probed (/health, /v1/models), warmed (small completions and
    chats, JSON or SSE), and /v1/embeddings answering BIG as `mode` says: "length" (one
    Content-Length body), "chunked" (64 KiB chunks), or "stall" (a Content-Length body
    that stops after its first MB, until the connection closes)."""

    def __init__(self) -> None:
        self.mode = "length"
        self.release = asyncio.Event()  # ends a stalled answer (teardown)

    async def __aenter__(self) -> BigReplica:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        for path in ("/v1/completions", "/v1/chat/completions"):
            app.router.add_post(path, self._small)
        app.router.add_post("/v1/embeddings", self._big)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(MODELS)

    async def _small(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        usage = {"prompt_tokens": 16, "completion_tokens": 1, "total_tokens": 17}
        if not body.get("stream"):
            return web.json_response({"id": "cmpl-1", "model": "tiny", "usage": usage,
                                      "choices": [{"index": 0, "text": "a",
                                                   "finish_reason": "length"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"id": "cmpl-1", "choices": [{"index": 0, "text": "a"}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _big(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if self.mode == "length":
            return web.Response(body=BIG, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if self.mode == "chunked":
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(BIG), 65536):
                await resp.write(BIG[i:i + 65536])
            await resp.write_eof()
            return resp
        resp.content_length = len(BIG)  # "stall"
        await resp.prepare(request)
        await resp.write(BIG[:1 << 20])
        await self.release.wait()  # cancelled when the gateway cuts the connection
        return resp


@pytest.fixture
async def setup() -> AsyncIterator[tuple[BigReplica, Gateway]]:
    async with BigReplica() as replica:
        cfg = quick_config([replica.url], upstream={"read_timeout": READ_TIMEOUT},
                           outlier={"consecutive_errors": 1000})
        async with Gateway(cfg) as gw:
            await wait_all_ready(gw, timeout=15)
            yield replica, gw


async def fetch(s: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]
                ) -> tuple[int, dict[str, str], bytes, float]:
    t0 = time.monotonic()
    async with asyncio.timeout(10):  # the gateway used to hold it until the client gave up
        async with s.post(url + path, json=body) as r:
            data = await r.read()
    return r.status, dict(r.headers), data, time.monotonic() - t0


async def serves_on(s: aiohttp.ClientSession, gw: Gateway) -> None:
    body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
    status, _, data, _ = await fetch(s, gw.url, "/v1/completions", body)
    assert status == 200 and json.loads(data)["choices"][0]["text"] == "a"
    assert gw.registry.endpoints["r0"].inflight == 0


@pytest.mark.parametrize("mode", ["length", "chunked"])
async def test_a_body_of_megabytes_reaches_the_client_whole(
        setup: tuple[BigReplica, Gateway], mode: str) -> None:
    replica, gw = setup
    replica.mode = mode
    assert len(BIG) > 10 * READ_AHEAD
    body = {"model": "tiny", "input": ["some text"] * 60}
    async with aiohttp.ClientSession() as s:
        for _ in range(2):  # and again on the kept connection
            status, headers, data, took = await fetch(s, gw.url, "/v1/embeddings", body)
            assert status == 200, data[:300]
            assert data == BIG
            assert took < 5.0
            assert headers["X-Warmgw-Replica"] == "r0"
            if mode == "length":
                assert int(headers["Content-Length"]) == len(BIG)
            await serves_on(s, gw)


async def test_a_replica_that_stops_mid_body_is_cut_by_the_read_timeout(
        setup: tuple[BigReplica, Gateway]) -> None:
    replica, gw = setup
    replica.mode = "stall"
    body = {"model": "tiny", "input": ["some text"] * 60}
    async with aiohttp.ClientSession() as s:
        status, _, data, took = await fetch(s, gw.url, "/v1/embeddings", body)
        assert status == 504, data[:300]
        err = json.loads(data)["error"]
        assert err["code"] == "upstream_failed" and "read timeout" in err["message"]
        assert READ_TIMEOUT <= took < READ_TIMEOUT + 3.0
        replica.mode = "length"
        status, _, data, _ = await fetch(s, gw.url, "/v1/embeddings", body)
        assert status == 200 and data == BIG
        await serves_on(s, gw)
