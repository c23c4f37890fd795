"""A replica that joins after users sent feature requests is warmed with what they sent:
against REAL vLLM (the simulator version is tests/test_learned_warmup.py).

Users send, through the gateway, to r0 alone (r1 is not in its config yet): completions
with logprobs, chat with a json_schema response_format, the LoRA adapter, n=2 at
temperature 1, plain chat and completions of a few prompt sizes, streamed and not. Then r1
joins and the same traffic goes on. Asserted from r1's own request log (conftest's
REQUEST_LOG: vLLM logs each request's body, its prompt's token ids and the sampling
parameters its engine runs it with, in the order it hands them to the engine): for every
user request r1 received, a warmup request of the same feature-shape (kind, stream,
model or adapter, prompt size bucket, n, logprobs, structured-output spec) reached it
before. User requests are told from warmup requests by their ids: the users here send an
X-Request-Id (the gateway passes it on, vLLM names the request after it), the warmup sends
none (vLLM makes a random one up). The structured-output spec is compared by content, and
as vLLM keys its grammars (key order counts).

The cost this saves, measured: vLLM 0.32 on the CPU compiles its logprobs op on the first
request that asks for logprobs, 19-23 s on this machine against ~30 ms after
(docs/benchmarks.md). r0 had no user traffic to learn from when it was warmed, so its first
user logprobs request pays that; r1's must not.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.helpers import gateway_config, wait_all_ready, wait_for, wait_state
from tests.vllm.conftest import (
    LORA_NAME,
    SERVED,
    TIMINGS,
    Logged,
    Replicas,
    read_request_log,
    sized_prompt,
)
from warmgw.app import Gateway
from warmgw.config import Config
from warmgw.core.lifecycle import State
from warmgw.core.model import EndpointSpec
from warmgw.core.shapes import fine

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(1200)]

USER = "user-"  # the X-Request-Id prefix of the test's user requests
FAST = 5.0  # s: a warm logprobs request takes ~0.03 s, its first use 19-23 s (CPU)
PERSON = {  # keys in a client's order, not sorted
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def config(urls: dict[str, str]) -> Config:
    return gateway_config(
        urls,
        # the default grid: every power of two up to max_model_len - max_tokens
        warmup={"prompt_lengths": [], "concurrency": [1, 2, 4], "max_tokens": [4],
                "tolerance": 0.5, "abs_tolerance": 0.1, "max_rounds": 4,
                "on_deadline": "ramp", "deadline": 300},
        health={"interval": 0.5, "timeout": 5.0},
        outlier={"latency_ratio": 50.0},  # a 20 s first use must not eject the only replica
        ramp={"tolerance": 1.0, "max_ramp_time": 30},
    )  # fmt: skip


@dataclass(frozen=True)
class Req:
    label: str
    path: str
    body: dict[str, Any]


async def traffic(s: aiohttp.ClientSession, url: str) -> list[Req]:
    """One request of each shape users send here."""

    async def text(tokens: int) -> str:
        return (await sized_prompt(s, url, tokens))[0]

    def chat(content: str, **extra: Any) -> dict[str, Any]:
        return {"model": SERVED, "messages": [{"role": "user", "content": content}],
                "max_tokens": 4, **extra}

    def comp(prompt: str, **extra: Any) -> dict[str, Any]:
        return {"model": SERVED, "prompt": prompt, "max_tokens": 4, **extra}

    usage = {"stream": True, "stream_options": {"include_usage": True}}
    return [
        Req("logprobs", "/v1/completions", comp(await text(20), logprobs=5)),
        Req("schema", "/v1/chat/completions", chat("a person as JSON", max_tokens=8,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "person", "schema": PERSON}})),
        Req("lora", "/v1/completions", {**comp(await text(30)), "model": LORA_NAME}),
        Req("n2", "/v1/completions", comp(await text(25), n=2, temperature=1.0)),
        Req("comp-12", "/v1/completions", comp(await text(12))),
        Req("comp-90", "/v1/completions", comp(await text(90))),
        Req("comp-400", "/v1/completions", comp(await text(400))),
        Req("comp-stream-150", "/v1/completions", comp(await text(150), **usage)),
        Req("chat-40", "/v1/chat/completions", chat(await text(30))),
        Req("chat-300", "/v1/chat/completions", chat(await text(290))),
        Req("chat-700", "/v1/chat/completions", chat(await text(690))),
        Req("chat-stream-60", "/v1/chat/completions", chat(await text(50), **usage)),
    ]  # fmt: skip


@dataclass
class Sent:
    label: str
    rid: str
    replica: str
    seconds: float


async def send(s: aiohttp.ClientSession, gw: Gateway, req: Req, rid: str) -> Sent:
    """One user request through the gateway, named rid (header and body, so that vLLM's
    log names the request and its body alike)."""
    t0 = time.monotonic()
    async with s.post(gw.url + req.path, json={**req.body, "request_id": rid},
                      headers={"X-Request-Id": rid}) as r:
        raw = await r.read()
        assert r.status == 200, (req.label, r.status, raw[:300])
        return Sent(req.label, rid, r.headers["X-Warmgw-Replica"], time.monotonic() - t0)


async def served(s: aiohttp.ClientSession, url: str) -> float:
    """Chat and completions requests a replica has finished since it started."""
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total{"))


def spec(x: Logged) -> str:
    """The structured-output spec the engine ran, by content: keys in any order."""
    m = re.search(r"json=(\{.*\}), regex=", x.structured)
    return json.dumps(ast.literal_eval(m.group(1)), sort_keys=True) if m else x.structured


def shape(x: Logged, exact: bool = False) -> tuple[object, ...]:
    """A request's feature-shape, as the replica ran it. exact: the structured-output spec
    as vLLM keys its grammars (json.dumps of the schema as sent: key order counts)."""
    structured = x.structured if exact else spec(x)
    return (x.kind, x.stream, x.model, fine(x.prompt_tokens), x.n, x.logprobs, structured)


def describe(x: Logged) -> str:
    return (f"{x.id}: {x.kind} stream={x.stream} model={x.model} {x.prompt_tokens} tokens "
            f"n={x.n} logprobs={x.logprobs} structured={x.structured[:90]}")


def unwarmed(log: list[Logged], exact: bool = False) -> tuple[dict[tuple[object, ...], str],
                                                              set[tuple[object, ...]]]:
    """The user requests whose feature-shape no warmup request had before them (one per
    shape), and the shapes the warmup sent."""
    warm: set[tuple[object, ...]] = set()
    missing: dict[tuple[object, ...], str] = {}
    for x in log:
        if not x.base.startswith(USER):
            warm.add(shape(x, exact))
        elif shape(x, exact) not in warm:
            missing.setdefault(shape(x, exact), describe(x))
    return missing, warm


@dataclass
class Scenario:
    reqs: list[Req]
    sent: list[Sent]  # the user requests, in order, and who served them
    log: list[Logged]  # r1's log from before it joined
    gw_metrics: str  # the gateway's /metrics at the end
    r0_fresh: bool  # r0 had served nothing before this module


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def scenario(vllm_replicas: Replicas) -> Scenario:
    vllm_replicas.ensure_up()
    r0, r1 = vllm_replicas[0], vllm_replicas[1]
    async with aiohttp.ClientSession() as s:
        # r1 must be a process that has served nothing: what it knows, its warmup taught it
        if await served(s, r1.url) > 0:
            await asyncio.to_thread(r1.kill)
            await asyncio.to_thread(r1.start)
            await asyncio.to_thread(r1.wait_healthy)
        r0_fresh = await served(s, r0.url) == 0
        reqs = await traffic(s, r0.url)
        sent: list[Sent] = []
        async with Gateway(config({"r0": r0.url})) as gw:
            await wait_all_ready(gw, timeout=400)
            # users on r0 alone: the gateway learns what they send
            for i in range(2):
                for req in reqs:
                    sent.append(await send(s, gw, req, f"{USER}{req.label}-a{i}"))
            assert {x.replica for x in sent} == {"r0"}
            offset = r1.log_path.stat().st_size
            joined = time.monotonic()
            gw.static.add(EndpointSpec("r1", r1.url, "blue"))
            # users go on while r1 warms and ramps: whatever reaches it must find it warm
            i = 0
            while gw.registry.endpoints["r1"].state is not State.READY:
                assert time.monotonic() - joined < 600, gw.registry.endpoints["r1"]
                for req in reqs:
                    sent.append(await send(s, gw, req, f"{USER}{req.label}-b{i}"))
                    await asyncio.sleep(0.2)
                i += 1
            TIMINGS["r1 added -> ready (default grid + learned shapes)"] = (
                time.monotonic() - joined)
            # then r1 alone: every shape reaches it
            gw.static.remove("r0")
            await wait_for(lambda: gw.registry.endpoints.get("r0") is None
                           or gw.registry.endpoints["r0"].state is not State.READY, 30,
                           "r0 out of rotation")
            await wait_state(gw, "r1", State.READY, timeout=5)
            for req in reqs:
                one = await send(s, gw, req, f"{USER}{req.label}-c")
                assert one.replica == "r1", one
                sent.append(one)
            warmed = next(t.reason for t in gw.registry.history
                          if t.name == "r1" and t.frm is State.WARMING)
            async with s.get(gw.url + "/metrics") as r:
                gw_metrics = await r.text()
            print(f"\nr1: {warmed}; cold hits counted: {dict(gw.router.cold_hits)}")
    return Scenario(reqs, sent, read_request_log(r1.log_path, offset), gw_metrics, r0_fresh)


async def test_a_joining_replica_was_warmed_with_every_shape_users_sent(
    scenario: Scenario,
) -> None:
    """From r1's own log: each user request's feature-shape, a warmup request had first."""
    log = scenario.log
    users = [x for x in log if x.base.startswith(USER)]
    assert {x.base.rsplit("-", 1)[0] for x in users} == {
        f"{USER}{r.label}" for r in scenario.reqs}  # every shape reached r1
    assert all(x.prompt_tokens > 0 for x in log), [describe(x) for x in log][:5]
    missing, warm = unwarmed(log)
    assert not missing, (
        "user requests on r1 whose feature-shape no warmup request had sent before:\n"
        + "\n".join(missing.values()) + "\nthe shapes r1's warmup sent:\n"
        + "\n".join(sorted(map(str, warm)))
    )
    # and with the default grid, sized in the replica's own tokens, nothing was refused
    refused = [line for line in scenario.gw_metrics.splitlines()
               if line.startswith("warmgw_warmup_refused_total")]
    assert refused == ["warmgw_warmup_refused_total 0.0"], refused
    print(f"{len(users)} user requests on r1, after {len(log) - len(users)} warmup requests")


async def test_the_warmup_sends_a_schema_as_users_send_it(scenario: Scenario) -> None:
    """vLLM keys its compiled grammars by the schema's text as sent: a client's key order
    is another grammar, so the warmup sends the spec in the users' own order."""
    missing, _ = unwarmed(scenario.log, exact=True)
    assert not missing, "\n".join(missing.values())


async def test_the_joining_replicas_first_logprobs_request_is_fast(scenario: Scenario) -> None:
    """The cost that saved: r1's first user request with logprobs was fast; r0's paid the
    first use (if r0 came fresh to this module: else it may have paid it before)."""
    first = {name: next(x.seconds for x in scenario.sent
                        if x.label == "logprobs" and x.replica == name)
             for name in ("r0", "r1")}
    print(f"first user logprobs request: {first}")
    assert first["r1"] < FAST, first
    if scenario.r0_fresh:
        assert first["r0"] > FAST, first
