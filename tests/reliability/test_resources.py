"""Misbehaviour leaves nothing behind: after each round of bad clients and faulty replicas
the gateway's client connections, the process's sockets and its asyncio tasks are back to
where they were, and memory does not creep up from round to round."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json

import aiohttp
import openai
import pytest

from tests.helpers import wait_all_ready
from tests.reliability.common import (
    call,
    exchange,
    open_fds,
    post,
    quick_config,
    rss_kib,
    settle,
    task_count,
    trickle,
)
from warmgw import app as app_module
from warmgw.app import ClientLimits, Gateway
from warmgw.sim import SimConfig, SimFleet

pytestmark = pytest.mark.timeout(90)

LIMITS = ClientLimits(idle_timeout=0.5, body_timeout=0.5)
OK = json.dumps({"model": "tiny", "prompt": "a b c", "max_tokens": 2}).encode()
LONG_STREAM = json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 500,
                          "stream": True}).encode()
JSON = b"Content-Type: application/json"


async def leave_mid_stream(port: int) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(post(LONG_STREAM, JSON))
    got = b""
    with contextlib.suppress(TimeoutError):  # (a hung replica answers nothing for a while)
        async with asyncio.timeout(5):
            while got.count(b"data: ") < 3 and (chunk := await r.read(65536)):
                got += chunk
    w.transport.abort()


async def leave_before_headers(port: int) -> None:
    _, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(post(LONG_STREAM.replace(b'"stream": true', b'"stream": false'), JSON))
    await asyncio.sleep(0.1)
    w.transport.abort()


async def openai_stream_dropped(url: str) -> None:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as c:
        try:
            stream = await c.completions.create(model="tiny", prompt="x", max_tokens=500,
                                                stream=True)
            async for _ in stream:
                break
            await stream.close()
        except openai.APIError:  # it went to a faulty replica
            pass


async def one_round(gw: Gateway, fleet: SimFleet) -> None:
    """About a hundred misbehaving requests and connections at once, and some good ones."""
    port, url = gw.port, gw.url
    r1, r2 = fleet.replicas[1], fleet.replicas[2]
    r1.set_faults(drop_mid_stream=2)  # dies in the middle of whatever it answers
    r2.set_faults(hang=True)  # says nothing until the read timeout
    bad: list[bytes] = [
        post(b"{nope", JSON), post(b'{"model": "tiny", "prom', JSON), post(b"[1]", JSON),
        post(b"[" * 3000, JSON), post(OK, b"Content-Type: text/plain"),
        post(OK, b"Content-Type: multipart/form-data; boundary=z"),
        post(b"{" + b" " * 70_000 + b"}", JSON),
        post(b"0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n", b"Content-Length: 5",
             b"Transfer-Encoding: chunked"),
        post(OK, b"Content-Length: 5", b"Content-Length: 6"),
        post(OK, b"X-Big: " + b"a" * 20_000), post(OK, *(b"X-H%d: v" % i for i in range(300))),
        post(OK, *(b"X-F%d: " % i + b"f" * 8000 for i in range(10))),
        post(OK, b"X-Bad: a\rb"), post(OK, b"X-Request-Id: " + b"r" * 500),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64,  # TLS to a plain port
    ]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        await asyncio.gather(
            *(exchange(port, b, 2.0) for b in bad for _ in range(3)),
            *(trickle(port, b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\n", b"X-S: 1\r\n",
                      0.05) for _ in range(10)),
            *(trickle(port, post(b"", JSON, b"Content-Length: 500"), OK, 0.05)
              for _ in range(5)),
            *(leave_mid_stream(port) for _ in range(5)),
            *(leave_before_headers(port) for _ in range(5)),
            *(openai_stream_dropped(url) for _ in range(3)),
            *(call(s, url, stream=i % 2 == 0, chat=i % 3 == 0) for i in range(30)),
            return_exceptions=False,
        )
    r1.clear_faults()
    r2.clear_faults()


async def test_misbehaviour_rounds_leave_no_sockets_tasks_or_memory_behind(monkeypatch):
    # idle pooled connections to replicas go quickly, so "back to baseline" is exact
    monkeypatch.setattr(app_module, "UPSTREAM_KEEPALIVE", 0.2)
    sim = SimConfig(ttft_base=0.003, itl=0.002)
    async with SimFleet(sim, replicas=3) as fleet:
        cfg = quick_config(fleet.urls, upstream={"read_timeout": 0.5, "max_body_bytes": 65536},
                           outlier={"consecutive_errors": 100_000}, health={"interval": 0.5})
        async with Gateway(cfg, limits=LIMITS) as gw:
            await wait_all_ready(gw, timeout=20)

            def idle() -> bool:
                return gw.client_connections == 0 and all(
                    e.inflight == 0 for e in gw.registry.endpoints.values()) and all(
                    r.process.scheduler.running == 0 for r in fleet.replicas)

            await one_round(gw, fleet)  # first use: lazy allocations, caches, pools
            assert await settle(idle, 5.0)
            await asyncio.sleep(0.5)
            gc.collect()
            base_fds, base_tasks = open_fds(), task_count()
            rss = [rss_kib()]
            for _ in range(4):
                await one_round(gw, fleet)
                assert await settle(idle, 5.0), (gw.client_connections, [
                    e.inflight for e in gw.registry.endpoints.values()])
                # sockets and tasks: exactly back (pooled connections expire in 0.2 s)
                back = await settle(lambda: open_fds() <= base_fds
                                    and task_count() <= base_tasks, 5.0)
                assert back, (open_fds(), base_fds, task_count(), base_tasks)
                gc.collect()
                rss.append(rss_kib())
            assert all(e.state.value == "ready" for e in gw.registry.endpoints.values())
    # The first rounds still grow the allocator's and the loop's tables to their working
    # size (~3 MiB here); after that a round adds next to nothing (~0.1 MiB; tracemalloc
    # finds no Python object piling up: the simulator's request log is most of it).
    assert rss[-1] - rss[0] < 6 * 1024, f"RSS (KiB) by round: {rss}"
    assert rss[-1] - rss[1] < 2 * 1024, f"RSS (KiB) by round: {rss}"
