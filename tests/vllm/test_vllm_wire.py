"""What real vLLM 0.32 (CPU, the tiny local model) looks like on the wire, pinned.

Straight to a replica, no gateway. These are the facts warmgw relies on or could notice,
and the reference for the simulator in warmgw/sim (several of them differ there; see the
report of the "Against real vLLM" issue). When vLLM is upgraded, a failure here says
what changed.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.vllm.build_model import LORA_DIR
from tests.vllm.conftest import (
    LORA_NAME,
    MAX_MODEL_LEN,
    MODEL,
    SERVED,
    Replicas,
    sized_prompt,
)
from warmgw.probe import start_marker

pytestmark = pytest.mark.timeout(600)

LONG = " ".join(["hello"] * 1100)  # over 1024 tokens with any tokenizer: >= 1 token a word


@pytest.fixture(autouse=True)
def replicas_up(vllm_replicas: Replicas) -> None:
    vllm_replicas.ensure_up()  # a failed test elsewhere must not fail these


@pytest.fixture
def url(vllm_replicas: Replicas) -> str:
    return vllm_replicas[0].url


@pytest.fixture
async def s() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(s: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, dict[str, str], bytes]:
    async with s.post(url, json=body) as r:
        return r.status, dict(r.headers), await r.read()


def events(raw: bytes) -> list[str]:
    """SSE events, checking the framing: each is exactly one `data: ...` line + blank line."""
    text = raw.decode()
    assert text.endswith("\n\n")
    out = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in out), out[:3]
    return [e[len("data: "):] for e in out]


# -- info routes ----------------------------------------------------------------------------


async def test_health_is_an_empty_200_and_head_is_405(s: aiohttp.ClientSession, url: str) -> None:
    async with s.get(url + "/health") as r:
        assert r.status == 200 and await r.read() == b""
        assert "Content-Type" not in r.headers
        assert r.headers["Server"] == "uvicorn"
    async with s.head(url + "/health") as r:
        assert r.status == 405 and r.headers["Allow"] == "GET"
    async with s.get(url + "/ping") as r:
        assert r.status == 200
    async with s.post(url + "/ping") as r:
        assert r.status == 200


async def test_models_card(s: aiohttp.ClientSession, url: str) -> None:
    async with s.get(url + "/v1/models") as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        data = await r.json()
    assert data["object"] == "list" and len(data["data"]) == 2
    card, lora = data["data"]
    assert card["id"] == SERVED and card["object"] == "model" and card["owned_by"] == "vllm"
    assert card["root"] == str(MODEL)  # the model path, not the served name
    assert card["parent"] is None and card["max_model_len"] == MAX_MODEL_LEN
    assert abs(card["created"] - time.time()) < 5  # the time of the request, not of start
    assert card["permission"][0]["object"] == "model_permission"
    # a LoRA adapter (--lora-modules NAME=PATH) is a card of its own: its base as parent,
    # its path as root, no max_model_len (the gateway reads that from the base's card)
    assert lora["id"] == LORA_NAME and lora["parent"] == SERVED
    assert lora["root"] == str(MODEL / LORA_DIR) and lora["max_model_len"] is None


async def test_version_and_load(s: aiohttp.ClientSession, url: str) -> None:
    async with s.get(url + "/version") as r:
        assert await r.json() == {"version": "0.32.0"}
    async with s.get(url + "/load") as r:
        assert await r.json() == {"server_load": 0}


async def test_metrics_names_and_start_time(s: aiohttp.ClientSession, url: str) -> None:
    async with s.get(url + "/metrics") as r:
        assert r.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
        text = await r.text()
    for name in (
        "vllm:num_requests_running", "vllm:num_requests_waiting",
        "vllm:num_requests_waiting_by_reason", "vllm:kv_cache_usage_perc",
        "vllm:engine_sleep_state", "vllm:cache_config_info", "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total", "vllm:request_success_total",
        "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total",
        "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket", "vllm:request_queue_time_seconds_bucket",
        "process_start_time_seconds",
    ):  # fmt: skip
        assert re.search(rf"^{re.escape(name)}[{{ ]", text, re.M), name
    assert "vllm:gpu_cache_usage_perc" not in text  # the old name is gone
    # every finished_reason is exported from the start, "abort" included
    for reason in ("stop", "length", "abort", "error"):
        assert f'finished_reason="{reason}"' in text
    assert 'num_gpu_blocks="16"' in text and 'block_size="128"' in text
    # how many adapters the engine holds at once (--max-loras): the gateway's max_lora
    assert re.search(r'^vllm:lora_requests_info\{max_lora="1",', text, re.M)
    line = re.search(r"^process_start_time_seconds (\S+)$", text, re.M)
    assert line is not None and "e+09" in line.group(1)  # e.g. 1.79590065315e+09
    assert start_marker(text.encode()) == float(line.group(1))


# -- inference: shapes --------------------------------------------------------------------


async def test_non_stream_bodies(s: aiohttp.ClientSession, url: str) -> None:
    st, h, raw = await post(s, url + "/v1/chat/completions", {
        "model": SERVED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "ignore_eos": True})
    assert st == 200 and h["Content-Type"] == "application/json" and "Content-Length" in h
    chat = json.loads(raw)
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", chat["id"])
    assert chat["system_fingerprint"].startswith("vllm-0.32.0-")
    msg = chat["choices"][0]["message"]
    assert msg["role"] == "assistant" and "tool_calls" not in msg and msg["refusal"] is None
    assert chat["choices"][0]["finish_reason"] == "length"
    assert chat["choices"][0]["stop_reason"] is None
    assert chat["usage"]["prompt_tokens_details"] is None
    st, h, raw = await post(s, url + "/v1/completions", {
        "model": SERVED, "prompt": "hello", "max_tokens": 2, "ignore_eos": True})
    comp = json.loads(raw)
    assert re.fullmatch(r"cmpl-[0-9a-f]{16}", comp["id"]) and comp["object"] == "text_completion"
    assert set(comp["usage"]) == {
        "prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details",
        "completion_tokens_details"}


async def test_sse_framing_chat(s: aiohttp.ClientSession, url: str) -> None:
    st, h, raw = await post(s, url + "/v1/chat/completions", {
        "model": SERVED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True})
    assert st == 200 and h["Content-Type"] == "text/event-stream; charset=utf-8"
    assert "Cache-Control" not in h and h.get("Transfer-Encoding") == "chunked"
    ev = events(raw)
    assert ev[-1] == "[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["prompt_token_ids"] is None  # extra top-level fields on the first chunk
    body = chunks[1:-1]
    assert 1 <= len(body) <= 3  # tokens the API server had not sent yet are merged
    assert [c["choices"][0]["finish_reason"] for c in body][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in body[:-1])
    assert all("stop_reason" not in c["choices"][0] for c in body[:-1])
    assert body[-1]["choices"][0]["stop_reason"] is None
    usage = chunks[-1]
    assert usage["choices"] == [] and set(usage["usage"]) == {
        "prompt_tokens", "total_tokens", "completion_tokens"}
    assert "system_fingerprint" in usage and "system_fingerprint" not in body[-1]
    assert len({c["id"] for c in chunks}) == 1


async def test_sse_framing_completions_without_usage(s: aiohttp.ClientSession, url: str) -> None:
    st, _, raw = await post(s, url + "/v1/completions", {
        "model": SERVED, "prompt": "hello", "max_tokens": 2, "stream": True,
        "ignore_eos": True})
    assert st == 200
    ev = events(raw)
    assert ev[-1] == "[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    assert 1 <= len(chunks) <= 2 and all(c["object"] == "text_completion" for c in chunks)
    assert all("stop_reason" in c["choices"][0] for c in chunks)  # on every chunk here
    assert "system_fingerprint" in chunks[-1]  # no usage chunk: on the last one


async def test_chunks_per_token_and_empty_deltas(s: aiohttp.ClientSession, url: str) -> None:
    st, _, raw = await post(s, url + "/v1/chat/completions", {
        "model": SERVED, "messages": [{"role": "user", "content": "tell me a story"}],
        "max_tokens": 200, "stream": True, "ignore_eos": True,
        "stream_options": {"include_usage": True}})
    assert st == 200
    chunks = [json.loads(e) for e in events(raw)[:-1]]
    content = chunks[1:-1]
    assert chunks[-1]["usage"]["completion_tokens"] == 200
    # one chunk per token while the API server keeps up with the engine; tokens pile up
    # and go out merged in one chunk when it does not (CPU contention)
    assert 1 <= len(content) <= 200
    # a token that ends mid-UTF-8 gives a chunk with "content": "" (random weights make
    # many); its bytes come with a later chunk
    empties = [c for c in content if c["choices"][0]["delta"]["content"] == ""]
    print(f"{len(content)} content chunks, {len(empties)} empty deltas, for 200 tokens")


async def test_headers_go_out_before_the_first_token(s: aiohttp.ClientSession, url: str) -> None:
    prompt, n = await sized_prompt(s, url, 900)
    assert 850 <= n <= 900, n
    body = {"model": SERVED, "prompt": prompt, "max_tokens": 2, "stream": True}
    t0 = time.monotonic()
    async with s.post(url + "/v1/completions", json=body) as r:
        headers_at = time.monotonic() - t0
        await r.content.readany()
        first_at = time.monotonic() - t0
        await r.read()
    print(f"headers after {headers_at * 1000:.0f} ms, first event after {first_at * 1000:.0f} ms")
    assert headers_at <= first_at


async def test_request_id_header_sets_the_response_id_only(
    s: aiohttp.ClientSession, url: str
) -> None:
    async def one(path: str, body: dict[str, Any]) -> tuple[str, dict[str, str]]:
        async with s.post(url + path, json=body, headers={"X-Request-Id": "dup"}) as r:
            return (await r.json())["id"], dict(r.headers)

    comp = {"model": SERVED, "prompt": "x", "max_tokens": 20, "ignore_eos": True}
    chat = {"model": SERVED, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    results = await asyncio.gather(*(one("/v1/completions", comp) for _ in range(3)))
    assert [rid for rid, _ in results] == ["cmpl-dup"] * 3  # duplicates in flight are fine
    assert "X-Request-Id" not in results[0][1]  # not echoed without --enable-request-id-headers
    assert (await one("/v1/chat/completions", chat))[0] == "chatcmpl-dup"


async def test_prompt_plus_max_tokens_over_the_limit_is_clamped(
    s: aiohttp.ClientSession, url: str
) -> None:
    prompt, n = await sized_prompt(s, url, 1000)
    assert 950 <= n <= 1000, n  # under max_model_len, but not with 100 tokens more
    st, _, raw = await post(s, url + "/v1/completions", {
        "model": SERVED, "prompt": prompt, "max_tokens": 100, "ignore_eos": True})
    assert st == 200, raw  # not a 400: generation stops at max_model_len
    usage = json.loads(raw)["usage"]
    assert usage["total_tokens"] == MAX_MODEL_LEN and usage["completion_tokens"] < 100


# -- inference: errors --------------------------------------------------------------------


async def test_error_bodies(s: aiohttp.ClientSession, url: str) -> None:
    cases: list[tuple[str, Any, int, dict[str, Any]]] = [
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404,
         {"type": "NotFoundError", "param": "model", "code": 404}),
        ("/v1/completions", {"model": SERVED, "prompt": LONG}, 400,
         {"type": "BadRequestError", "param": "input_tokens", "code": 400}),
        ("/v1/completions", {"model": SERVED, "prompt": LONG, "stream": True}, 400,
         {"type": "BadRequestError", "param": "input_tokens", "code": 400}),
        ("/v1/chat/completions",
         {"model": SERVED, "messages": [{"role": "user", "content": LONG}]}, 400,
         {"type": "BadRequestError", "param": "input_tokens", "code": 400}),
        ("/v1/completions", {"model": SERVED, "prompt": "x", "max_tokens": 2000}, 400,
         {"type": "BadRequestError", "param": "max_tokens", "code": 400}),
        ("/v1/completions", {"model": SERVED, "prompt": "x", "max_tokens": 0}, 400,
         {"type": "BadRequestError", "param": "max_tokens", "code": 400}),
        ("/v1/completions", {"model": SERVED}, 400,
         {"type": "BadRequestError", "param": "prompt", "code": 400}),
    ]
    for path, body, status, expected in cases:
        st, h, raw = await post(s, url + path, body)
        assert st == status, (body, raw)
        assert h["Content-Type"] == "application/json"
        err = json.loads(raw)["error"]
        assert {k: err[k] for k in expected} == expected, (body, err)
    async with s.post(url + "/v1/completions", data=b"{not json",
                      headers={"Content-Type": "application/json"}) as r:
        err = (await r.json())["error"]
        assert r.status == 400 and err["type"] == "Bad Request" and err["param"] == "body.1"
    # a model that only generates has no embeddings route at all
    st, _, raw = await post(s, url + "/v1/embeddings", {"model": SERVED, "input": "x"})
    assert (st, json.loads(raw)) == (404, {"detail": "Not Found"})
    async with s.get(url + "/v1/completions") as r:
        assert r.status == 405 and await r.json() == {"detail": "Method Not Allowed"}


async def test_lax_request_fields(s: aiohttp.ClientSession, url: str) -> None:
    # pydantic's lax mode: "yes" is a boolean true, so this streams
    st, h, raw = await post(s, url + "/v1/completions", {
        "model": SERVED, "prompt": "x", "max_tokens": 1, "stream": "yes"})
    assert st == 200 and h["Content-Type"].startswith("text/event-stream")
    # no model: the served one
    st, _, raw = await post(s, url + "/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert st == 200 and json.loads(raw)["model"] == SERVED


# -- connections --------------------------------------------------------------------------


async def test_disconnect_aborts_but_is_not_counted_as_abort(
    s: aiohttp.ClientSession, url: str
) -> None:
    async def scrape() -> str:
        async with s.get(url + "/metrics") as r:
            return await r.text()

    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix))

    gen = "vllm:generation_tokens_total"
    abort = 'vllm:request_success_total{engine="0",finished_reason="abort"'
    results = []
    # The API server can lag the engine by a whole generation on 2 busy cores: the engine
    # may finish first. Several tries; one cut short shows the abort.
    for attempt in range(1, 9):
        before = await scrape()
        body = {"model": SERVED, "prompt": f"hello {attempt}", "max_tokens": 1000,
                "stream": True, "ignore_eos": True}
        resp = await s.post(url + "/v1/completions", json=body)
        await resp.content.readline()
        resp.close()  # drops the connection
        t0 = time.monotonic()
        while value(await scrape(), "vllm:num_requests_running") != 0:
            assert time.monotonic() - t0 < 10
            await asyncio.sleep(0.05)
        after = await scrape()
        results.append(value(after, gen) - value(before, gen))
        if results[-1] < 1000:
            assert value(after, abort) == value(before, abort)  # not counted as "abort"
            return
    pytest.fail(f"every try ran to the end: {results}")


def test_idle_keep_alive_connections_are_closed_after_5_s(vllm_replicas: Replicas) -> None:
    """uvicorn's keep-alive timeout (5 s): a client pool that keeps idle connections
    longer can pick one that the server is closing at that very moment."""
    port = int(vllm_replicas[0].url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert sock.recv(4096) == b""  # the server closed it
        idle = time.monotonic() - t0
    assert 4.0 <= idle <= 7.0, idle
