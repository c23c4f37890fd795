"""Prefix-cache warmup end to end (routing.prefix.keep_prefixes): users (by their `user`
field) send long shared system prompts through the gateway to three simulated replicas
with prefix caches; a fourth joins mid-traffic. With keep_prefixes on, the gateway kept
the hot system prompts, replayed them to the newcomer as it was warmed, and recorded it as
holding them: among its first user requests, under 1 % miss the shared prefix (by the
replica's own usage.prompt_tokens_details.cached_tokens), and they carry most of the hot
prefixes. Without it, the newcomer's first sight of each hot prefix is a miss, or it is
sent few of them (their holders keep them within the load bound)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections.abc import Callable

import aiohttp
import pytest

from tests.helpers import gateway_config, wait_all_ready, wait_state
from warmgw import status
from warmgw.app import Gateway
from warmgw.core.lifecycle import State
from warmgw.core.model import EndpointSpec
from warmgw.sim import SimConfig, SimFleet
from warmgw.sim.tokens import chat_token_ids

SIM = SimConfig(ttft_base=0.003, ttft_per_prompt_token=0.00005, itl=0.001,
                prefix_block_tokens=16, prefix_cache_blocks=1024)
SYSTEMS = 16  # 16 x ~200 tokens: the hot set fits one replica's cache (16k tokens)
WORDS = 200
FIRST = 100  # the newcomer's first user requests judged


def system(p: int) -> str:
    return " ".join(f"sys{p}w{i}" for i in range(WORDS))


async def user_traffic(s: aiohttp.ClientSession, url: str, seed: int, stop: asyncio.Event,
                       judged: Callable[[str], bool], served: list[tuple[int, int]]) -> None:
    """One user loop: hot system prompts, `user` among 40 names; the answers of the replicas
    `judged` picks are noted (system prompt, cached tokens) until FIRST of them."""
    rng = random.Random(seed)
    for k in itertools.count():
        if stop.is_set():
            return
        p = rng.randrange(SYSTEMS)
        body = {"model": "tiny", "max_tokens": 2, "user": f"user-{rng.randrange(40)}",
                "messages": [{"role": "system", "content": system(p)},
                             {"role": "user", "content": f"question {seed} {k}"}]}
        async with s.post(url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200, await r.text()
            got = await r.json()
            if judged(r.headers["X-Warmgw-Replica"]):
                served.append((p, got["usage"]["prompt_tokens_details"]["cached_tokens"]))
                if len(served) >= FIRST:
                    stop.set()


async def newcomer(keep: bool) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """(system prompt, cached tokens) of each of the newcomer's first FIRST user requests
    (all carry a hot system prompt), and the gateway's kept-prefix figures when r3 joined."""
    served: list[tuple[int, int]] = []  # r3's user requests, in order
    routing = {"prefix": {"enabled": True, "keep_prefixes": keep, "keep_min_users": 3}}
    async with SimFleet(SIM, replicas=4) as fleet:
        urls = {f"r{i}": fleet.urls[i] for i in range(3)}
        async with Gateway(gateway_config(urls, routing=routing)) as gw, \
                aiohttp.ClientSession() as s:
            await wait_all_ready(gw)
            stop = asyncio.Event()

            workers = [asyncio.create_task(user_traffic(
                s, gw.url, i, stop, lambda name: name == "r3", served)) for i in range(6)]
            try:
                await asyncio.sleep(1.5)  # every hot prefix sent by many users
                kept = gw.router.keeper
                figures = {"kept": len(kept), "bytes": kept.bytes} if kept else {}
                gw.static.add(EndpointSpec("r3", fleet.urls[3], "blue"))
                await wait_state(gw, "r3", State.RAMPING, timeout=30)
                await asyncio.wait_for(stop.wait(), 60)
            finally:
                stop.set()
                await asyncio.gather(*workers)
    return served[:FIRST], figures


def misses(served: list[tuple[int, int]]) -> float:
    """Share of requests that missed the shared system prompt (~208 tokens with the chat
    template): a hit reuses all of its full blocks but the one the cut prefix ended in."""
    return sum(c < WORDS // 2 for _, c in served) / len(served)


def distinct(served: list[tuple[int, int]]) -> int:
    return len({p for p, _ in served})


@pytest.mark.timeout(180)
async def test_a_newcomer_warmed_with_the_hot_prefixes_does_not_miss_them() -> None:
    warm, figures = await newcomer(keep=True)
    cold, _ = await newcomer(keep=False)
    print(f"kept when r3 joined: {figures}; r3's first {FIRST} user requests missing the "
          f"shared prefix: {misses(warm):.1%} with keep_prefixes, {misses(cold):.1%} without;"
          f" hot prefixes among them: {distinct(warm)} vs {distinct(cold)} of {SYSTEMS}")
    assert figures["kept"] == SYSTEMS
    assert len(warm) == FIRST and misses(warm) < 0.01
    assert distinct(warm) >= SYSTEMS * 3 // 4  # its fair part of the hot prefixes
    # the control: unwarmed, it misses each hot prefix it is sent the first time, or (the
    # holders keeping their prefixes within the load bound) it is sent few of them
    assert misses(cold) >= 0.03 or distinct(cold) <= SYSTEMS // 4


@pytest.mark.timeout(60)
async def test_what_one_user_sent_is_never_kept() -> None:
    """One user sends the same long document over and over; three users share a system
    prompt: only the shared prompt is kept, and /metrics and the profile view say so."""
    routing = {"prefix": {"enabled": True, "keep_prefixes": True, "keep_min_users": 3}}
    secret = " ".join(f"alice-secret-{i}" for i in range(200))
    async with SimFleet(SIM, replicas=2) as fleet:
        async with Gateway(gateway_config(fleet.urls, routing=routing)) as gw, \
                aiohttp.ClientSession() as s:
            await wait_all_ready(gw)
            sent = [("alice", secret)] * 30 + [(u, system(0)) for u in ("bob", "carol", "dan")]
            for k, (user, text) in enumerate(sent):
                body = {"model": "tiny", "max_tokens": 1, "user": user, "messages": [
                    {"role": "system", "content": text}, {"role": "user", "content": f"q{k}"}]}
                async with s.post(gw.url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
            async with s.get(gw.url + "/metrics") as r:
                metrics = await r.text()
            keeper = gw.router.keeper
            assert keeper is not None
            texts = [m["content"] for k in keeper.kept.values() for m in k.body["messages"]]
            view = status.profile(gw.router)["prefixes"]
    assert len(texts) == 1 and system(0).startswith(texts[0])
    assert not any("alice" in t for t in texts)
    assert view["kept"] == 1 and view["bytes"] == len(texts[0]) and view["min_users"] == 3
    assert "warmgw_prefixes_kept 1.0" in metrics
    assert f"warmgw_prefixes_kept_bytes {float(len(texts[0]))}" in metrics


async def green_after_cutover(keep: bool) -> list[tuple[int, int]]:
    """Users on blue (two replicas), green (two) warm and idle; a cutover to green: green's
    first FIRST user requests, (system prompt, cached tokens)."""
    token = "t0ken"
    routing = {"prefix": {"enabled": True, "keep_prefixes": keep, "keep_min_users": 3}}
    served: list[tuple[int, int]] = []
    async with SimFleet(SIM, replicas=4) as fleet:
        u = fleet.urls
        replicas = [{"name": n, "url": url, "pool": n.split("-")[0]} for n, url in
                    zip(("blue-0", "blue-1", "green-0", "green-1"), u, strict=True)]
        cfg = gateway_config({}, replicas=replicas, policy={"active": "blue"},
                             admin={"port": 0, "token": token}, routing=routing)
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await wait_all_ready(gw)
            stop = asyncio.Event()

            workers = [asyncio.create_task(user_traffic(
                s, gw.url, i, stop, lambda name: name.startswith("green"), served))
                for i in range(6)]
            try:
                await asyncio.sleep(1.5)
                async with s.post(gw.admin_url + "/admin/v1/cutover", json={"to": "green"},
                                  headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200, await r.text()
                await asyncio.wait_for(stop.wait(), 60)
            finally:
                stop.set()
                await asyncio.gather(*workers)
    return served[:FIRST]


@pytest.mark.timeout(120)
async def test_a_cutover_warms_the_new_pool_with_the_hot_prefixes_first() -> None:
    warm = await green_after_cutover(keep=True)
    cold = await green_after_cutover(keep=False)
    print(f"green's first {FIRST} user requests missing the shared prefix: "
          f"{misses(warm):.1%} with keep_prefixes, {misses(cold):.1%} without")
    assert len(warm) == FIRST and misses(warm) < 0.01
    assert misses(cold) >= 0.05  # the control: each hot prefix's first sight on green


@pytest.mark.timeout(90)
async def test_a_replay_bigger_than_the_cache_stops_at_its_share_hottest_kept() -> None:
    """The kept hot set (16 prompts of ~208 tokens) is three times the newcomer's prefix
    cache (1,024 tokens): the replay stops at warm_cache_share (half) of it by the tokens
    the replica reports, hottest first, so the hottest prompt is still cached when the
    newcomer starts taking users (a replay that filled the cache would have evicted its own
    first, hottest prompts)."""
    sim = dataclasses.replace(SIM, prefix_cache_blocks=64)
    routing = {"prefix": {"enabled": True, "keep_prefixes": True, "keep_min_users": 3}}
    async with SimFleet(sim, replicas=4) as fleet:
        urls = {f"r{i}": fleet.urls[i] for i in range(3)}
        async with Gateway(gateway_config(urls, routing=routing)) as gw, \
                aiohttp.ClientSession() as s:
            await wait_all_ready(gw)
            rng = random.Random(3)
            for k in range(400):  # prompt p sent with weight 1 / (p + 1): 0 the hottest
                p = rng.choices(range(SYSTEMS), [1 / (p + 1) for p in range(SYSTEMS)])[0]
                body = {"model": "tiny", "max_tokens": 1, "user": f"user-{k % 40}",
                        "messages": [{"role": "system", "content": system(p)},
                                     {"role": "user", "content": f"question {k}"}]}
                async with s.post(gw.url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200, await r.text()
            assert gw.router.keeper is not None and len(gw.router.keeper) == SYSTEMS
            gw.static.add(EndpointSpec("r3", fleet.urls[3], "blue"))
            await wait_state(gw, "r3", State.RAMPING, timeout=30)  # no user request since
            cache = fleet.replicas[3].process.prefix
            held = [cache.held(chat_token_ids([{"role": "system", "content": system(p)}]))
                    for p in range(SYSTEMS)]
    print(f"tokens of each kept prompt the newcomer holds after its warmup: {held}")
    assert held[0] >= WORDS  # the hottest survived its own replay, whole
    replayed = sum(1 for h in held if h)
    assert 1 <= replayed <= 3  # half of 1,024 tokens, plus the one that crossed it
