"""Blue-green at the gateway over real sockets: cutover and rollback under load with no
failed request and no cut stream; refusals; the admin API's authentication."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.helpers import gateway_config, wait_all_ready, wait_for
from tests.scenario import Load
from warmgw.app import Gateway
from warmgw.sim import SimConfig, SimFleet

TOKEN = "s3cret-token"
SIM = SimConfig(ttft_base=0.02, itl=0.01, max_running=16)


def config(urls: dict[str, str], **extra: object):
    cfg = gateway_config(urls, admin={"port": 0, "token": TOKEN}, **extra)
    return cfg


def pooled(blue: list[str], green: list[str]) -> list[dict[str, str]]:
    return [{"name": f"blue-{i}", "url": u, "pool": "blue"} for i, u in enumerate(blue)] + [
        {"name": f"green-{i}", "url": u, "pool": "green"} for i, u in enumerate(green)
    ]


async def admin(gw: Gateway, method: str, path: str, body: object = None,
                token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.request(
        method, gw.admin_url + "/admin/v1" + path, json=body, headers=headers
    ) as r:
        return r.status, await r.json()


@pytest.fixture
async def fleet():
    async with SimFleet(SIM, replicas=4) as f:
        yield f


async def test_cutover_and_rollback_under_load_lose_nothing(fleet, tmp_path):
    urls = fleet.urls
    cfg = config({}, replicas=pooled(urls[:2], urls[2:]), policy={"active": "blue"},
                 state_file=str(tmp_path / "policy.json"), upstream={"read_timeout": 30})
    async with Gateway(cfg) as gw:
        await wait_all_ready(gw, timeout=30)
        async with Load(gw.url, concurrency=16, max_tokens=30) as load:
            await asyncio.sleep(2.0)
            t_call = time.monotonic()
            status, res = await admin(gw, "POST", "/cutover", {"to": "green"})
            t_switched = time.monotonic()
            assert status == 200, res
            await wait_for(lambda: gw.bluegreen.history[-1].drained is not None, 20,
                           "blue to drain")
            blue_drained = gw.bluegreen.history[-1]
            await asyncio.sleep(2.0)
            t_back = time.monotonic()
            status, res = await admin(gw, "POST", "/rollback")
            t_back_done = time.monotonic()
            assert status == 200, res
            await wait_for(lambda: gw.bluegreen.history[-1].drained is not None, 20,
                           "green to drain")
            await asyncio.sleep(1.0)
        samples = load.samples
        failed = [s for s in samples if not s.ok]
        assert failed == [] and len(samples) > 200
        on_blue_before = [s for s in samples if s.start < t_call and s.replica.startswith("blue")]
        assert len(on_blue_before) > 50 and all(s.ok for s in on_blue_before)
        started_green = [s for s in samples if t_switched < s.start < t_back]
        assert started_green and all(s.replica.startswith("green") for s in started_green)
        started_back = [s for s in samples if s.start > t_back_done]
        assert started_back and all(s.replica.startswith("blue") for s in started_back)
        # streams that were running on blue at the cutover ran to completion
        spanning = [s for s in samples if s.stream and s.start < t_call
                    and s.replica.startswith("blue") and s.start + 0.3 > t_call]
        assert spanning and all(s.ok for s in spanning)
        last_blue = max(r.start for rep in fleet.replicas[:2] for r in rep.log
                        if not r.warmup and r.start < t_back)
        drain = (blue_drained.drained or 0) - blue_drained.started
        print(f"\ncutover: admin call -> last new request on blue "
              f"{(last_blue - t_call) * 1000:.1f} ms; drain {drain:.2f} s; "
              f"{len(samples)} requests, 0 failed")
    # the policy survives a restart
    async with Gateway(cfg) as gw2:
        assert gw2.bluegreen.active == "blue" and gw2.bluegreen.previous == "green"
        assert [c.to for c in gw2.bluegreen.history] == ["green", "blue"]


async def test_cutover_to_cold_or_empty_pool_is_refused(fleet):
    sims = fleet.replicas
    cold_green = [{"name": "green-0", "url": "http://127.0.0.1:9", "pool": "green"}]
    cfg = config({}, replicas=pooled([s.url for s in sims[:2]], []) + cold_green)
    async with Gateway(cfg) as gw:
        await wait_for(lambda: gw.registry.endpoints["blue-0"].state.value == "ready", 20)
        await wait_for(lambda: gw.registry.endpoints["blue-1"].state.value == "ready", 20)
        before = gw.status()["policy"]
        status, res = await admin(gw, "POST", "/cutover", {"to": "green"})
        assert status == 409
        assert "0 warm replica(s), needs 2" in res["error"]["message"]
        assert res["error"]["target_warm"] == 0 and res["error"]["needed"] == 2
        status, res = await admin(gw, "POST", "/cutover", {"to": "purple"})
        assert status == 404 and "no pool named 'purple'" in res["error"]["message"]
        status, res = await admin(gw, "POST", "/cutover", {"to": "blue"})
        assert status == 409 and "already active" in res["error"]["message"]
        assert gw.status()["policy"] == before


async def test_conflicting_cutovers_one_wins(fleet):
    urls = fleet.urls
    cfg = config({}, replicas=pooled(urls[:2], urls[2:]))
    async with Gateway(cfg) as gw:
        await wait_all_ready(gw, timeout=30)
        results = await asyncio.gather(
            admin(gw, "POST", "/cutover", {"to": "green", "from": "blue"}),
            admin(gw, "POST", "/cutover", {"to": "green", "from": "blue"}),
        )
        assert sorted(s for s, _ in results) == [200, 409]
        loser = next(r for s, r in results if s == 409)
        assert "someone else switched first" in loser["error"]["message"]
        assert gw.bluegreen.active == "green"


async def test_admin_needs_the_token_and_rejects_bad_calls(fleet):
    cfg = config({}, replicas=pooled(fleet.urls[:1], fleet.urls[1:2]))
    async with Gateway(cfg) as gw:
        assert (await admin(gw, "GET", "/status", token=None))[0] == 401
        assert (await admin(gw, "GET", "/status", token="wrong"))[0] == 401
        async with aiohttp.ClientSession() as s:
            async with s.get(gw.admin_url + f"/admin/v1/status?token={TOKEN}") as r:
                assert r.status == 401  # the token goes in the header, nowhere else
            async with s.post(gw.admin_url + "/admin/v1/cutover", data=b"{oops",
                              headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 400 and "not valid JSON" in (await r.json())["error"]["message"]
            # the proxy port exposes no admin path
            async with s.get(gw.url + "/admin/v1/status",
                             headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 404
        for body, words in [
            ({"to": 3}, "'to' must name a pool"),
            ({"to": "green", "mode": "sideways"}, "mode must be instant or gradual"),
            ({"to": "green", "force": "yes"}, "'force' must be true or false"),
            ({"to": "green", "bogus": 1}, "unknown field 'bogus'"),
        ]:
            status, res = await admin(gw, "POST", "/cutover", body)
            assert status == 400 and words in res["error"]["message"], res
        assert (await admin(gw, "POST", "/replicas/nope/drain"))[0] == 404
        assert (await admin(gw, "POST", "/rollback"))[0] == 409
        status, res = await admin(gw, "POST", "/replicas", {"name": "x", "url": "nope"})
        assert status == 400 and "expected http://host:port" in res["error"]["message"]
        status, st = await admin(gw, "GET", "/status")
        assert status == 200 and {r["name"] for r in st["replicas"]} == {"blue-0", "green-0"}


async def test_gradual_cutover_moves_in_steps_and_completes(fleet):
    urls = fleet.urls
    cfg = config({}, replicas=pooled(urls[:2], urls[2:]))
    async with Gateway(cfg) as gw:
        await wait_all_ready(gw, timeout=30)
        async with Load(gw.url, concurrency=8) as load:
            status, res = await admin(gw, "POST", "/cutover",
                                      {"to": "green", "mode": "gradual", "duration": 2,
                                       "steps": 4})
            assert status == 200 and res["policy"] == {"blue": 0.75, "green": 0.25}
            seen: set[float] = set()
            while gw.bluegreen.in_progress is not None:
                seen.add(gw.registry.policy.share("green"))
                status, _ = await admin(gw, "POST", "/cutover", {"to": "red"})
                assert status in (404, 409)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
        assert {0.25, 0.5, 0.75} <= seen
        assert gw.bluegreen.active == "green" and gw.bluegreen.history[-1].outcome == "done"
        assert all(s.ok for s in load.samples)


async def test_gradual_cutover_aborts_back_when_the_target_fails(fleet):
    urls = fleet.urls
    cfg = config({}, replicas=pooled(urls[:2], urls[2:]))
    async with Gateway(cfg) as gw:
        await wait_all_ready(gw, timeout=30)
        for sim in fleet.replicas[2:]:
            sim.set_faults(error_rate=0.6)
        async with Load(gw.url, concurrency=8):
            status, _ = await admin(gw, "POST", "/cutover",
                                    {"to": "green", "mode": "gradual", "duration": 30,
                                     "steps": 10, "max_error_rate": 0.1})
            assert status == 200
            await wait_for(lambda: gw.bluegreen.in_progress is None, 20, "the abort")
        rec = gw.bluegreen.history[-1]
        assert rec.outcome == "aborted" and "target error rate" in rec.reason
        assert gw.registry.policy.as_dict() == {"blue": 1.0}
        assert gw.bluegreen.active == "blue"


async def test_drain_deadline_cuts_what_is_left(fleet):
    slow = SimConfig(ttft_base=0.01, itl=0.05)
    async with SimFleet(slow, replicas=1) as blue:
        urls = {"blue-0": blue.urls[0]}
        reps = [{"name": "blue-0", "url": blue.urls[0], "pool": "blue"},
                {"name": "green-0", "url": fleet.urls[0], "pool": "green"}]
        cfg = config(urls, replicas=reps, cutover={"drain_deadline": 0.5, "min_warm_fraction": 0})
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await wait_all_ready(gw, timeout=30)
            body = {"model": "tiny", "prompt": "x", "max_tokens": 200, "stream": True}
            async with s.post(gw.url + "/v1/completions", json=body) as r:
                assert r.headers["X-Warmgw-Replica"] == "blue-0"
                await r.content.readany()
                status, _ = await admin(gw, "POST", "/cutover", {"to": "green"})
                assert status == 200
                t0 = time.monotonic()
                data = b""
                try:
                    async for chunk in r.content.iter_any():
                        data += chunk
                except aiohttp.ClientPayloadError:
                    pass
                took = time.monotonic() - t0
            assert took < 3.0 and b"[DONE]" not in data  # cut near the deadline, not run out
            await wait_for(lambda: gw.bluegreen.history[-1].drained is not None, 5)
            assert "drain deadline passed with 1 in flight" in gw.bluegreen.history[-1].reason


async def test_old_pool_is_kept_warm_for_the_rollback_window(fleet):
    urls = fleet.urls
    cfg = config({}, replicas=pooled(urls[:2], urls[2:]),
                 cutover={"keep_warm_interval": 0.2, "rollback_window": 1.5})
    async with Gateway(cfg) as gw:
        await wait_all_ready(gw, timeout=30)
        blue = fleet.replicas[:2]
        assert (await admin(gw, "POST", "/cutover", {"to": "green"}))[0] == 200
        before = [r.stats.warmup_requests for r in blue]
        await asyncio.sleep(1.0)
        during = [r.stats.warmup_requests for r in blue]
        assert all(d >= b + 2 for b, d in zip(before, during, strict=True))  # kept warm
        await asyncio.sleep(1.0)  # the window closes
        settled = [r.stats.warmup_requests for r in blue]
        await asyncio.sleep(0.8)
        assert [r.stats.warmup_requests for r in blue] == settled  # and then left alone
