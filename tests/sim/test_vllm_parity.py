"""The simulator matches real vLLM 0.32 on the points pinned in tests/vllm/test_vllm_wire.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sim_helpers import FAST, scrape, vllm

from warmgw.sim import SimReplica

SMALL = dataclasses.replace(FAST, max_model_len=20)


@pytest.fixture
async def small() -> AsyncIterator[SimReplica]:
    async with SimReplica(SMALL, name="small") as r:
        yield r


async def post(
    session: aiohttp.ClientSession, url: str, body: Any
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(url, json=body) as r:
        return r.status, dict(r.headers), await r.read()


async def test_response_ids_are_16_hex_without_x_request_id(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    # as real vLLM 0.32: cmpl-/chatcmpl- + 16 hex characters
    _, _, raw = await post(session, replica.url + "/v1/completions",
                           {"prompt": "x", "max_tokens": 1})  # fmt: skip
    assert re.fullmatch(r"cmpl-[0-9a-f]{16}", json.loads(raw)["id"])
    chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    _, _, raw = await post(session, replica.url + "/v1/chat/completions", chat)
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", json.loads(raw)["id"])


async def test_json_content_type_has_no_charset(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    # as real vLLM 0.32: exactly application/json, for answers and errors alike
    st, h, _ = await post(session, replica.url + "/v1/completions",
                          {"prompt": "x", "max_tokens": 1})  # fmt: skip
    assert st == 200 and h["Content-Type"] == "application/json" and "Content-Length" in h
    st, h, _ = await post(session, replica.url + "/v1/completions", {"model": "nope"})
    assert st == 404 and h["Content-Type"] == "application/json"
    async with session.get(replica.url + "/v1/models") as r:
        assert r.headers["Content-Type"] == "application/json"


async def test_sse_has_no_cache_control(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    # as real vLLM 0.32: text/event-stream; charset=utf-8, chunked, no Cache-Control
    chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": True}
    st, h, _ = await post(session, replica.url + "/v1/chat/completions", chat)
    assert st == 200 and h["Content-Type"] == "text/event-stream; charset=utf-8"
    assert "Cache-Control" not in h and h.get("Transfer-Encoding") == "chunked"


async def test_405_carries_allow_header(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    # as real vLLM 0.32: HEAD /health -> Allow: GET; GET /v1/completions -> Allow: POST
    async with session.head(replica.url + "/health") as r:
        assert r.status == 405 and r.headers["Allow"] == "GET"
    async with session.get(replica.url + "/v1/completions") as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"
        assert await r.json() == {"detail": "Method Not Allowed"}


async def test_idle_keep_alive_connection_closed_after_5_s(replica: SimReplica) -> None:
    # as real vLLM 0.32 (uvicorn's default keep-alive timeout, 5 s)
    reader, writer = await asyncio.open_connection(replica.host, replica.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(4096), 10) == b""  # the server closed it
        idle = time.monotonic() - t0
    finally:
        writer.close()
    assert 4.5 <= idle <= 6.5, idle


async def test_prompt_plus_max_tokens_over_the_limit_is_clamped(
    small: SimReplica, session: aiohttp.ClientSession
) -> None:
    # as real vLLM 0.32: a 200 that stops at max_model_len total tokens, finish "length"
    st, _, raw = await post(session, small.url + "/v1/completions",
                            {"prompt": "w " * 15, "max_tokens": 10})  # fmt: skip
    assert st == 200, raw
    body = json.loads(raw)
    assert body["usage"] == {"prompt_tokens": 15, "total_tokens": 20, "completion_tokens": 5}
    assert body["choices"][0]["finish_reason"] == "length"
    st, _, raw = await post(session, small.url + "/v1/completions",
                            {"prompt": "w " * 15, "max_tokens": 10, "stream": True})  # fmt: skip
    assert st == 200 and raw.count(b'"text"') == 5


async def test_prompt_alone_over_the_limit_is_400_input_tokens(
    small: SimReplica, session: aiohttp.ClientSession
) -> None:
    # as real vLLM 0.32: param "input_tokens", streaming or not, chat too
    for path, body in (
        ("/v1/completions", {"prompt": "w " * 21, "max_tokens": 1}),
        ("/v1/completions", {"prompt": "w " * 21, "stream": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w " * 21}]}),
    ):
        st, h, raw = await post(session, small.url + path, body)
        err = json.loads(raw)["error"]
        assert (st, err["type"], err["param"], err["code"]) == (
            400, "BadRequestError", "input_tokens", 400)  # fmt: skip
        assert h["Content-Type"] == "application/json"
        assert "your prompt contains at least" in err["message"]
        assert "exceeds this limit even without any output tokens" in err["message"]


async def test_max_tokens_over_the_limit_is_400_max_tokens(
    small: SimReplica, session: aiohttp.ClientSession
) -> None:
    # as real vLLM 0.32
    st, _, raw = await post(session, small.url + "/v1/completions",
                            {"prompt": "x", "max_tokens": 21})  # fmt: skip
    err = json.loads(raw)["error"]
    assert (st, err["type"], err["param"]) == (400, "BadRequestError", "max_tokens")


async def test_unknown_model_404_names_the_valid_aliases(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    # as real vLLM 0.32
    st, _, raw = await post(session, replica.url + "/v1/completions",
                            {"model": "nope", "prompt": "x"})  # fmt: skip
    err = json.loads(raw)["error"]
    assert (st, err["type"], err["param"], err["code"]) == (404, "NotFoundError", "model", 404)
    assert err["message"].endswith("Valid aliases: tiny.")


async def test_stream_accepts_lax_booleans_like_yes(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    # as real vLLM 0.32 (pydantic lax mode): "yes" is true, so this streams
    st, h, raw = await post(session, replica.url + "/v1/completions",
                            {"prompt": "x", "max_tokens": 1, "stream": "yes"})  # fmt: skip
    assert st == 200 and h["Content-Type"].startswith("text/event-stream")
    assert raw.endswith(b"data: [DONE]\n\n")
    st, h, _ = await post(session, replica.url + "/v1/completions",
                          {"prompt": "x", "max_tokens": 1, "stream": "off"})  # fmt: skip
    assert st == 200 and h["Content-Type"] == "application/json"
    st, _, raw = await post(session, replica.url + "/v1/completions",
                            {"prompt": "x", "max_tokens": 1, "stream": "maybe"})  # fmt: skip
    assert st == 400 and json.loads(raw)["error"]["param"] == "stream"


async def test_request_success_exported_from_the_start_with_every_finished_reason(
    replica: SimReplica, session: aiohttp.ClientSession
) -> None:
    # as real vLLM 0.32: every finished_reason at 0 before any request, "abort" included
    samples = await scrape(session, replica.url)
    for reason in ("stop", "length", "abort", "error", "repetition"):
        assert samples[vllm("vllm:request_success_total", finished_reason=reason)] == 0


async def test_restart_resets_in_flight_connections(replica: SimReplica) -> None:
    # as real vLLM 0.32 when its process is killed: the client sees a connection reset
    replica.set_faults(hang=True)
    reader, writer = await asyncio.open_connection(replica.host, replica.port)
    try:
        body = b'{"prompt":"x","max_tokens":1}'
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))  # fmt: skip
        await writer.drain()
        await asyncio.sleep(0.05)  # the request is in flight, hanging
        await replica.restart()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
        replica.clear_faults()
