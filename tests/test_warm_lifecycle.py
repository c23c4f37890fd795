"""The heart of the product, over real sockets: a replica added under steady load gets no
user request before its warmup has converged, and users do not see its cold start. The
same scenario without warmup shows the cold penalty, so the difference is proven."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.helpers import gateway_config, observe, wait_all_ready, wait_for, wait_state
from tests.scenario import Load, summary
from warmgw.app import Gateway
from warmgw.core.lifecycle import State
from warmgw.core.registry import Transition
from warmgw.core.warm import WarmProfile
from warmgw.sim import SimConfig, SimFleet
from warmgw.warmup import Warmer

COLD = SimConfig(
    ttft_base=0.08, ttft_per_prompt_token=0.00005, itl=0.01, max_running=8,
    cold_shape_penalty=1.5, cold_batch_penalty=0.8,
)
WARMUP = {"prompt_lengths": [16, 256, 1024], "max_tokens": [4], "concurrency": [1, 2, 4, 8],
          "tolerance": 0.3, "abs_tolerance": 0.01, "deadline": 30}
RESULTS: dict[str, dict[str, dict[str, float]]] = {}


async def prewarm(urls: list[str]) -> None:
    """Warm replicas directly, so every strategy starts from the same warm steady state."""
    import aiohttp

    from warmgw.core.clock import MonotonicClock

    profile = WarmProfile(prompt_lengths=(16, 256, 1024), max_tokens=(4,), concurrency=(1, 2, 4, 8))
    async with aiohttp.ClientSession() as s:
        warmer = Warmer(s, profile, MonotonicClock())
        await asyncio.gather(*(warmer.warm(u, "tiny", 4096, None) for u in urls))


@pytest.mark.parametrize("strategy", ["warm", "slow_start", "round_robin"])
async def test_scale_up_under_load(strategy: str) -> None:
    async with SimFleet(COLD, replicas=3) as fleet:
        r0, r1, r2 = fleet.replicas
        await prewarm([r0.url, r1.url])
        urls = {"r0": r0.url, "r1": r1.url}
        cfg = gateway_config(urls, strategy=strategy, warmup=WARMUP,
                             slow_start={"window": 4.0})
        async with Gateway(cfg) as gw:
            await wait_all_ready(gw, timeout=30)
            users_on_r2_when_warm: list[int] = []

            def on_transition(t: Transition) -> None:
                if t.name == "r2" and t.frm is State.WARMING and t.to is State.RAMPING:
                    users_on_r2_when_warm.append(r2.stats.user_requests)

            observe(gw.registry, on_transition)
            async with Load(gw.url, concurrency=8) as load:
                await asyncio.sleep(4.0)
                t_event = time.monotonic()
                gw.static.reload(gateway_config({**urls, "r2": r2.url}, strategy=strategy,
                                         warmup=WARMUP, slow_start={"window": 4.0}))
                await wait_state(gw, "r2", State.READY, timeout=40)
                await wait_for(lambda: r2.stats.user_requests >= 30, 20, "user traffic on r2")
                await asyncio.sleep(1.0)
                t_end = time.monotonic()
            steady = summary([s for s in load.samples if s.start < t_event])
            during = summary([s for s in load.samples if t_event <= s.start < t_end])

        RESULTS[strategy] = {"steady": steady, "during": during,
                             "cold_hits": {"user": r2.stats.user_cold_hits}}
        print(f"\n{strategy}: steady {steady}\n{strategy}: during {during}; "
              f"user requests that paid a cold penalty on r2: {r2.stats.user_cold_hits}")
        assert steady["errors"] == 0 and during["errors"] == 0
        assert steady["requests"] > 100 and during["requests"] > 100
        if strategy == "warm":
            assert users_on_r2_when_warm == [0], "user traffic reached r2 before it was warm"
            assert r2.stats.user_cold_hits == 0
            assert r2.stats.warmup_cold_hits > 0  # the gateway paid the cold start itself
            assert during["p99"] <= 1.2 * steady["p99"]
            assert during["max"] <= 1.2 * steady["max"]
        else:
            assert r2.stats.user_cold_hits > 0
            assert during["max"] > 2 * steady["max"]  # users saw the cold start


async def test_restarted_replica_is_rewarmed_before_user_traffic() -> None:
    cfg_sim = SimConfig(
        ttft_base=0.03, itl=0.004, max_running=8, cold_shape_penalty=1.0,
        cold_batch_penalty=0.5, load_time=1.0, refuse_while_loading=True,
    )
    async with SimFleet(cfg_sim, replicas=2) as fleet:
        await fleet.wait_loaded()
        r0, r1 = fleet.replicas
        cfg = gateway_config({"r0": r0.url, "r1": r1.url}, warmup=WARMUP)
        async with Gateway(cfg) as gw:
            await wait_all_ready(gw, timeout=40)
            rewarmed_at: list[float] = []

            def on_transition(t: Transition) -> None:
                if t.name == "r1" and t.frm is State.WARMING and t.to is State.RAMPING:
                    rewarmed_at.append(time.monotonic())

            observe(gw.registry, on_transition)
            async with Load(gw.url, concurrency=6) as load:
                await wait_for(lambda: r1.stats.user_requests > 50, 10, "traffic on r1")
                restarted_at = time.monotonic()
                await r1.restart()
                await wait_for(lambda: bool(rewarmed_at), 40, "r1 to be warmed again")
                await wait_state(gw, "r1", State.READY, timeout=20)
                users_before = r1.stats.user_requests
                await wait_for(lambda: r1.stats.user_requests > users_before + 20, 10,
                               "user traffic back on r1")
        # the gateway noticed: it took r1 out and warmed it again
        moves = [(t.frm, t.to) for t in gw.registry.history if t.name == "r1"]
        after = moves[moves.index((State.READY, State.EJECTED)):]
        assert (State.PROBING, State.WARMING) in after and (State.WARMING, State.RAMPING) in after
        # no user request reached r1 between its restart and the end of its new warmup
        users_in_gap = [
            rec for rec in r1.log
            if not rec.warmup and restarted_at + 0.05 < rec.start < rewarmed_at[0]
        ]
        assert users_in_gap == []
        assert r1.stats.user_cold_hits == 0
        assert r1.stats.restarts == 1
        # only the requests running on r1 at the restart may fail, and they fail clearly
        errors = [s for s in load.samples if not s.ok]
        assert len(errors) <= 6, errors


async def test_warmup_is_idempotent_a_warm_replica_takes_one_round() -> None:
    async with SimFleet(COLD, replicas=2) as fleet:
        cfg = gateway_config({"r0": fleet.urls[0], "r1": fleet.urls[1]}, warmup=WARMUP)
        async with Gateway(cfg) as gw:
            await wait_all_ready(gw, timeout=40)
            first = [t.reason for t in gw.registry.history
                     if t.frm is State.WARMING and t.to is State.RAMPING]
            # cold: the first replicas needed more than one round to settle
            assert all("after 1 round(s)" not in r for r in first), first
            sent = fleet.replicas[0].stats.warmup_requests
            gw.registry.rewarm("r0")
            await wait_state(gw, "r0", State.RAMPING, timeout=20)
            again = gw.registry.history[-1]
            assert again.name == "r0" and "converged after 1 round(s)" in again.reason
            cold = [r.stats.warmup_cold_hits for r in fleet.replicas]
            assert cold[0] == cold[1]  # the rewarm paid no cold start: it was warm
            per_round = fleet.replicas[0].stats.warmup_requests - sent
            assert 0 < per_round <= sent / 2  # one round, not a whole warmup again
