"""DNS discovery against a real DNS server on loopback (tests/dns_server.py), replicas
simulated on their own 127.0.0.x addresses: records added or removed reach the gateway
within an interval; a failed lookup keeps the last known set."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.dns_server import LoopbackDns
from tests.helpers import FAST_WARMUP, wait_for, wait_state
from warmgw.app import Gateway
from warmgw.config import parse
from warmgw.core.lifecycle import State
from warmgw.discovery.dns import DnsDiscovery
from warmgw.sim import SimConfig, SimFleet

INTERVAL = 0.3


@pytest.fixture
def dns() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:
        yield server


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    cfg = SimConfig(ttft_base=0.003, itl=0.001, cold_shape_penalty=0.2)
    async with SimFleet(cfg, replicas=3, distinct_hosts=True, host="127.0.0.31") as f:
        yield f


def dns_config(dns: LoopbackDns, **params: Any):
    return parse({
        "listen": {"port": 0},
        "discovery": {"dns": {"interval": INTERVAL, "timeout": 0.5,
                              "nameserver": dns.nameserver, **params}},
        "warmup": FAST_WARMUP,
        "health": {"interval": 0.2, "timeout": 1.0},
        "ramp": {"doubling_time": 0.2, "initial_weight": 0.2},
    })


async def complete(url: str) -> tuple[int, str]:
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 3}
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
        await r.read()
        return r.status, r.headers.get("X-Warmgw-Replica", "")


def source(gw: Gateway) -> DnsDiscovery:
    assert gw.dns is not None
    return gw.dns


async def test_a_records_follow_the_answer_and_survive_an_outage(dns, fleet, caplog):
    caplog.set_level(logging.INFO, "warmgw.dns")
    port = fleet.replicas[0].port
    r0, r1, r2 = (f"{sim.host}:{port}" for sim in fleet.replicas)
    dns.set_a("vllm.test", [fleet.replicas[0].host, fleet.replicas[1].host])
    async with Gateway(dns_config(dns, name="vllm.test", type="A", port=port)) as gw:
        for n in (r0, r1):
            await wait_state(gw, n, State.READY, timeout=20)
        assert gw.registry.endpoints[r0].url == f"http://{r0}"
        assert {(await complete(gw.url))[0] for _ in range(4)} == {200}

        dns.set_a("vllm.test", [fleet.replicas[1].host, fleet.replicas[2].host])
        t0 = time.monotonic()
        await wait_for(lambda: r2 in gw.registry.endpoints and r0 not in gw.registry.endpoints,
                       INTERVAL + 1.0, "the new answer within an interval")
        assert time.monotonic() - t0 <= INTERVAL + 1.0
        assert (State.READY, State.DRAINING) in [
            (t.frm, t.to) for t in gw.registry.history if t.name == r0]
        await wait_state(gw, r2, State.READY, timeout=20)
        assert fleet.replicas[2].stats.warmup_requests > 0  # warmed before user traffic

        dns.failing = True
        await wait_for(lambda: source(gw).failures >= 3, 10, "three failed lookups")
        assert set(gw.registry.endpoints) == {r1, r2}  # the last known set stands
        assert {(await complete(gw.url))[0] for _ in range(4)} == {200}
        dns.failing = False
        await wait_for(lambda: not source(gw).failing, 5, "lookups answered again")
        msgs = [r.getMessage() for r in caplog.records if r.name == "warmgw.dns"]
        assert len([m for m in msgs if "lookup failed" in m]) == 1, msgs  # once per outage
        assert len([m for m in msgs if "resolves again" in m]) == 1, msgs


async def test_srv_targets_are_replicas_named_target_port(dns, fleet):
    port = fleet.replicas[0].port
    for i, sim in enumerate(fleet.replicas):
        dns.set_a(f"r{i}.vllm.test", [sim.host])
    dns.set_srv("_http._tcp.vllm.test", [("r0.vllm.test", port), ("r1.vllm.test", port)])
    cfg = dns_config(dns, name="_http._tcp.vllm.test", type="SRV", pool="blue", model="tiny")
    async with Gateway(cfg) as gw:
        names = [f"r0.vllm.test:{port}", f"r1.vllm.test:{port}"]
        for n in names:
            await wait_state(gw, n, State.READY, timeout=20)
        ep = gw.registry.endpoints[names[0]]
        assert (ep.url, ep.pool) == (f"http://{fleet.replicas[0].host}:{port}", "blue")
        assert gw.bluegreen.active == "blue"  # the DNS source's pool serves

        dns.set_srv("_http._tcp.vllm.test", [("r1.vllm.test", port), ("r2.vllm.test", port)])
        await wait_for(lambda: names[0] not in gw.registry.endpoints, INTERVAL + 1.0)
        new = f"r2.vllm.test:{port}"
        await wait_state(gw, new, State.READY, timeout=20)
        served = {(await complete(gw.url)) for _ in range(6)}
        assert {status for status, _ in served} == {200}
        assert {who for _, who in served} <= {names[1], new}

        dns.set_srv("_http._tcp.vllm.test", [])  # the name has no SRV records now
        await wait_for(lambda: gw.registry.endpoints == {}, INTERVAL + 1.0, "all drained")
