"""Latency judged per uncached prompt token: with prefix routing on, a request's latency key
(the ramp's and the fleet baseline's) is its uncached part of the prompt: the replica's
cached_tokens when it said, else the prefix index's estimate at pick time (the chunks the
picked replica was sent x chunk bytes / bytes per token)."""

from __future__ import annotations

import random

import pytest

from tests.core.test_picker import NOW, one_pool, ready
from warmgw.core.clock import FakeClock
from warmgw.core.facts import RequestFacts, cached_tokens_of
from warmgw.core.lifecycle import State
from warmgw.core.policy import TrafficPolicy
from warmgw.core.prefix import PrefixParams, RoutingParams
from warmgw.core.registry import LifecycleParams, Registry
from warmgw.core.routing import Router

HOT = tuple(range(500, 532))  # 32 chunks of 256 bytes: 2048 tokens at 4 bytes a token


def buckets(uncached_latency: bool, cached: list[int]) -> list[int]:
    """The prompt-size bucket (bit length) of each request's latency key, as the fleet
    baseline files it: one replica, the same 2100-token prompt sent len(cached) times,
    the replica saying it found cached[i] of them (-1: it did not say)."""
    clock = FakeClock(NOW)
    routing = RoutingParams(PrefixParams(enabled=True, uncached_latency=uncached_latency))
    r = Router(Registry(LifecycleParams(), clock, TrafficPolicy.single("blue")), clock,
               random.Random(1), routing=routing)
    ep = ready("a")
    ep.state = State.READY
    route = one_pool(ep)
    out: list[int] = []
    fleet = r.registry.fleet
    for c in cached:
        before = {k: e.n for k, e in fleet._by_model.get("m", {}).items()}
        facts = RequestFacts("chat", "m", False, 8400, 16, 2100, chunks=HOT)
        t = r.pick(route, facts)
        assert t is not None
        clock.advance(0.01)
        t.complete(200, prompt_tokens=2100, cached_tokens=c)
        t.close()
        after = fleet._by_model.get("m", {})
        out.extend(k >> 9 for k, e in after.items() if e.n > before.get(k, 0))
    return out


def test_the_replicas_cached_tokens_key_the_latency() -> None:
    # the first request of a shape on a replica feeds nothing (it may pay a first use)
    got = buckets(True, [0, 0, 0, 2048, 2048, 2048, 2048])
    assert got == [12, 12, 6, 6, 6, 6]  # 2100 uncached, then 52


def test_without_a_count_the_index_estimate_keys_it() -> None:
    # first pick: nothing in the index, all 2100 uncached; then 32 chunks = 2048 tokens held
    assert buckets(True, [-1] * 6) == [6] * 5


def test_off_the_whole_prompt_keys_it() -> None:
    assert buckets(False, [0, 0, 2048, 2048, 2048]) == [12] * 4


@pytest.mark.parametrize(("body", "cached"), [
    (b'{"usage":{"prompt_tokens":21,"total_tokens":25,"completion_tokens":4,'
     b'"prompt_tokens_details":{"cached_tokens":16}}}', 16),
    (b'{"usage":{"prompt_tokens":21,"prompt_tokens_details": {"cached_tokens": 0}}}', 0),
    (b'{"usage":{"prompt_tokens":21,"prompt_tokens_details":null}}', -1),
    (b'{"usage":{"prompt_tokens_details":{"cached_tokens":null}}}', -1),
])
def test_cached_tokens_are_found_without_parsing(body: bytes, cached: int) -> None:
    assert cached_tokens_of(body) == cached
