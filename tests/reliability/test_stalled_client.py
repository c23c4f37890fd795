"""A client that stops reading a stream must not hold the replica's generation forever:
once a write has waited clients.write_timeout for the client's socket to drain, the
stream is cut. A client that reads slowly but keeps reading is not cut.

The replica generates as fast as it can (no per-token delay), so the kernel's socket
buffers (several MB on loopback) fill within a second or two."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.helpers import wait_all_ready, wait_for
from tests.reliability.common import post, quick_config
from warmgw.app import ClientLimits, Gateway
from warmgw.sim import SimConfig, SimFleet

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

WRITE_TIMEOUT = 0.5
JSON_CT = b"Content-Type: application/json"


def stream_request(max_tokens: int) -> bytes:
    body = {"model": "tiny", "prompt": "x", "max_tokens": max_tokens, "stream": True}
    return post(json.dumps(body).encode(), JSON_CT, b"Connection: close")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env() -> AsyncIterator[tuple[SimFleet, Gateway]]:
    sim = SimConfig(ttft_base=0.002, itl=0.0, max_model_len=200_000)
    async with SimFleet(sim, replicas=1) as fleet:
        limits = ClientLimits(write_timeout=WRITE_TIMEOUT)
        async with Gateway(quick_config(fleet.urls), limits=limits) as gw:
            await wait_all_ready(gw, timeout=20)
            yield fleet, gw


async def small_window_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=4096)


def outcomes(fleet: SimFleet) -> list[str]:
    return [rec.outcome for r in fleet.replicas for rec in r.log]


async def test_a_client_that_stops_reading_is_cut_and_the_replica_stops(env):
    fleet, gw = env
    before = len(outcomes(fleet))
    stats = gw.router.stats.requests
    left = sum(n for k, n in stats.items() if k[3] == 499)
    r, w = await small_window_client(gw.port)
    w.write(stream_request(150_000))  # ~20 MB of events: far more than the buffers hold
    await w.drain()
    t0 = time.monotonic()
    # the generation would take many seconds; the cut comes once the buffers are full
    await wait_for(lambda: len(outcomes(fleet)) > before, 10.0, "the replica to stop")
    assert outcomes(fleet)[before:] == ["disconnected"]
    took = time.monotonic() - t0
    await wait_for(lambda: sum(n for k, n in stats.items() if k[3] == 499) == left + 1, 2.0,
                   "the request to be counted as 499")
    got = b""
    async with asyncio.timeout(10):
        while chunk := await r.read(1 << 16):  # what was buffered, then the close
            got += chunk
    w.close()
    assert got.startswith(b"HTTP/1.1 200") and b"data: " in got and b"[DONE]" not in got
    assert took < 8.0


async def test_a_slow_but_steady_reader_gets_its_whole_stream(env):
    """The socket is full most of the time, but each read frees room well within the
    write timeout: the stream is delivered to its end."""
    _, gw = env
    r, w = await small_window_client(gw.port)
    w.write(stream_request(20_000))  # ~2.5 MB
    await w.drain()
    got = bytearray()
    async with asyncio.timeout(40):
        while chunk := await r.read(4096):
            got += chunk
            if len(got) % (256 * 1024) < 4096:
                await asyncio.sleep(WRITE_TIMEOUT * 0.6)  # pauses shorter than the timeout
    w.close()
    assert bytes(got).startswith(b"HTTP/1.1 200")
    assert b"data: [DONE]" in got
