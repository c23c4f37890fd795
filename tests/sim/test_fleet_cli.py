"""SimFleet in one event loop, and the `python -m warmgw.sim` command."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import aiohttp
import pytest
from sim_helpers import FAST

from warmgw.sim import SimConfig, SimFleet


async def test_fleet_ports_seeds_and_context(session: aiohttp.ClientSession) -> None:
    async with SimFleet(FAST, 3) as fleet:
        assert [r.name for r in fleet.replicas] == ["r0", "r1", "r2"]
        assert [r.config.seed for r in fleet.replicas] == [0, 1, 2]
        assert len({r.port for r in fleet.replicas}) == 3
        for url in fleet.urls:
            async with session.get(url + "/health") as resp:
                assert resp.status == 200
        urls = fleet.urls
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh.get(urls[0] + "/health")


async def test_fleet_distinct_loopback_hosts_share_a_port(session: aiohttp.ClientSession) -> None:
    async with SimFleet(FAST, 3, distinct_hosts=True) as fleet:
        assert [r.host for r in fleet.replicas] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        assert len({r.port for r in fleet.replicas}) == 1
        for r in fleet.replicas:
            body = {"prompt": "x", "max_tokens": 1}
            async with session.post(r.url + "/v1/completions", json=body) as resp:
                assert resp.status == 200
            assert r.stats.user_requests == 1  # each address reached its own replica


async def test_fleet_per_replica_configs_and_validation() -> None:
    fleet = SimFleet([FAST, SimConfig(model="other")])
    assert [r.config.model for r in fleet.replicas] == ["tiny", "other"]
    with pytest.raises(ValueError, match="replicas=0"):
        SimFleet(FAST, 0)
    with pytest.raises(ValueError, match="replicas=3"):
        SimFleet([FAST], 3)


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmgw.sim", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_cli_serves_until_sigint(session: aiohttp.ClientSession) -> None:
    proc = await _spawn("--replicas", "2", "--itl", "0.001", "--log-level", "warning")
    try:
        assert proc.stdout is not None
        urls = []
        async with asyncio.timeout(10):
            for _ in range(2):
                line = (await proc.stdout.readline()).decode()
                m = re.fullmatch(r"sim replica (r\d) serving model tiny at (http://\S+)\n", line)
                assert m, line
                urls.append(m.group(2))
        for url in urls:
            async with session.get(url + "/health") as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_rejects_bad_config() -> None:
    proc = await _spawn("--max-running", "0")
    async with asyncio.timeout(10):
        _out, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"SimConfig.max_running" in err and b"got 0" in err


async def test_cli_cold_rules_preset_and_adapters(session: aiohttp.ClientSession) -> None:
    proc = await _spawn(
        "--cold-rules", "features", "--cold-scale", "0.01", "--lora-modules", "x,y=/srv/y",
        "--chars-per-token", "2", "--log-level", "warning",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            line = (await proc.stdout.readline()).decode()
        m = re.fullmatch(r"sim replica r0 serving model tiny at (http://\S+)\n", line)
        assert m, line
        url = m.group(1)
        async with session.get(url + "/v1/models") as resp:
            cards = (await resp.json())["data"]
        assert [(c["id"], c["root"]) for c in cards[1:]] == [("x", "/adapters/x"), ("y", "/srv/y")]
        async with session.post(url + "/tokenize", json={"prompt": "abcd e"}) as resp:
            assert (await resp.json())["count"] == 3
        body = {"model": "y", "prompt": "a", "max_tokens": 1, "logprobs": 1}
        async with session.post(url + "/v1/completions", json=body) as resp:
            assert resp.status == 200
        async with session.get(url + "/sim/requests") as resp:
            (rec,) = (await resp.json())["requests"]
        assert rec["cold"] == ["prompt_bucket:8", "batch_bucket:1", "adapter:y", "logprobs"]
        async with session.get(url + "/sim/stats") as resp:
            assert (await resp.json())["prompt_buckets"][:3] == [8, 12, 18]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(10):
                await proc.wait()
