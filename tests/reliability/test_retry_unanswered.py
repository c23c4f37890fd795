"""A request whose connection the replica closes or resets before any byte of the answer
(a pooled one it was closing, idle, as the request went out; or any connection, fresh
too, when its process dies with the request in it) is sent once more, on a fresh
connection, to another replica when one routes: the client sees its answer, not a 502.
Only once: dropped twice, the client gets the 502. With upstream.retry_unanswered off, the
client gets the 502 (the control)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import aiohttp
import pytest

from tests.helpers import gateway_config, wait_all_ready
from warmgw.app import Gateway

MODELS = {"object": "list", "data": [{"id": "tiny", "object": "model", "max_model_len": 512}]}
COMPLETION = {"id": "c", "object": "text_completion", "model": "tiny",
              "choices": [{"index": 0, "text": "ok", "finish_reason": "length"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class Replica:
    """Just enough of an OpenAI server over raw HTTP/1.1 keep-alive connections; while
    `drop_reused` is set, a completion that arrives on a connection that has already served
    one is met with a close and no byte (once per setting); the next `drop` completions, on
    any connection, are met with a reset (RST, as from a killed process) and no byte."""

    def __init__(self) -> None:
        self.drop_reused = False
        self.drop = 0
        self.completions = 0  # completions that reached it, dropped ones included
        self.dropped = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                _, path, _ = line.decode().split(" ", 2)
                length = 0
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = h.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                body: Any
                if path == "/v1/completions":
                    self.completions += 1
                    if self.drop_reused and served > 0:
                        self.drop_reused = False
                        self.dropped += 1
                        return  # closed, no byte
                    if self.drop > 0:
                        self.drop -= 1
                        self.dropped += 1
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                        writer.transport.abort()
                        return  # reset, no byte
                    body = COMPLETION
                elif path == "/v1/models":
                    body = MODELS
                elif path == "/metrics":
                    body = None
                else:
                    body = {}
                data = b"" if body is None else json.dumps(body).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(data), data))
                await writer.drain()
                if path == "/v1/completions":
                    served += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


@pytest.mark.parametrize("retry", [True, False])
async def test_a_pooled_connection_closed_unanswered_is_retried_once_fresh(retry: bool) -> None:
    replica = Replica()
    await replica.start()
    try:
        cfg = gateway_config({"r0": replica.url}, strategy="round_robin",
                             upstream={"retry_unanswered": retry})
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await wait_all_ready(gw)
            body = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
            async with s.post(gw.url + "/v1/completions", json=body) as r:
                assert r.status == 200  # the pooled connection now exists
            replica.drop_reused = True
            async with s.post(gw.url + "/v1/completions", json=body) as r:
                status = r.status
                answer = await r.json()
            assert replica.dropped == 1
            if retry:
                assert status == 200, answer
                assert answer["choices"][0]["text"] == "ok"
                assert replica.completions == 3  # the dropped one was sent again
            else:
                assert status == 502, answer
                assert replica.completions == 2
    finally:
        await replica.stop()


BODY = {"model": "tiny", "prompt": "hi", "max_tokens": 1}


async def _post(s: aiohttp.ClientSession, url: str) -> tuple[int, str, Any]:
    async with s.post(url + "/v1/completions", json=BODY,
                      headers={"Connection": "close"}) as r:
        return r.status, r.headers.get("X-Warmgw-Replica", ""), await r.json()


async def test_a_reset_on_a_fresh_connection_is_retried_once_on_another_replica() -> None:
    """Every request r0 takes, it resets unanswered (its process died with them): each goes
    once more, to r1, on a fresh connection; no client sees a failure."""
    r0, r1 = Replica(), Replica()
    await r0.start()
    await r1.start()
    try:
        cfg = gateway_config({"r0": r0.url, "r1": r1.url}, strategy="round_robin",
                             outlier={"consecutive_errors": 1000})
        async with Gateway(cfg) as gw:
            await wait_all_ready(gw)
            gw.pool.keepalive = 0.0  # every request on a fresh connection
            async with aiohttp.ClientSession() as s:
                r0.drop = 1000
                before = r0.completions + r1.completions
                results = [await _post(s, gw.url) for _ in range(10)]
            assert [st for st, _, _ in results] == [200] * 10, results
            assert {rep for _, rep, _ in results} == {"r1"}
            # those sent to r0 came to r1 once more: none was sent a third time
            assert r0.dropped >= 3 and r0.completions - r0.dropped == 0
            assert r0.completions + r1.completions - before == 10 + r0.dropped
    finally:
        await r0.stop()
        await r1.stop()


@pytest.mark.parametrize("drops", [1, 2])
async def test_a_sole_replica_gets_it_once_more_and_only_once(drops: int) -> None:
    """With no other replica the request goes once more to the same one, afresh; dropped
    again, the client gets the 502 (it is not sent a third time)."""
    replica = Replica()
    await replica.start()
    try:
        cfg = gateway_config({"r0": replica.url}, strategy="round_robin",
                             outlier={"consecutive_errors": 1000})
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await wait_all_ready(gw)
            before = replica.completions
            replica.drop = drops
            status, _, answer = await _post(s, gw.url)
            assert replica.completions - before == 2
            if drops == 1:
                assert status == 200, answer
            else:
                assert status == 502, answer
                assert answer["error"]["type"] == "upstream_error"
    finally:
        await replica.stop()
