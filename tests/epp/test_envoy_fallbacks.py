"""The fallback endpoints (`epp.fallbacks`) as Envoy gets them: in dynamic metadata
`envoy.lb` / `x-gateway-destination-endpoint` as `ip:port,ip:port`, read by Envoy's
override-host load-balancing policy, which routes to the first and goes down the list when
a connection is refused (a retry on connect-failure). Envoy echoes the metadata it got and
the upstream it used in response headers, so what is checked is what Envoy did with the
EPP's answer, and which replica's own log has the request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.epp.conftest import ENVOY
from tests.epp.envoy import Envoy, config
from tests.helpers import gateway_config, wait_all_ready
from warmgw.app import Gateway
from warmgw.sim import SimConfig, SimFleet, SimReplica

FAST = SimConfig(ttft_base=0.002, itl=0.001)
SEEN = "x-seen-endpoints"  # the metadata value as Envoy holds it
UPSTREAM = "x-upstream"


def override_host(cfg: dict[str, Any], replicas: list[SimReplica]) -> dict[str, Any]:
    """The replicas' cluster as an InferencePool's would be: the pool's endpoints, the
    override-host policy reading the EPP's metadata only (not the header, so that the test
    shows the metadata is what routes), two retries on a refused connection. (config()'s
    ext_proc filter accepts the `envoy.lb` metadata namespace: Envoy drops it otherwise.)"""
    static = cfg["static_resources"]
    hcm = static["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost["routes"][0]["route"]["retry_policy"] = {"retry_on": "connect-failure",
                                                   "num_retries": 2}
    vhost["response_headers_to_add"] = [
        {"header": {"key": SEEN,
                    "value": "%DYNAMIC_METADATA(envoy.lb:x-gateway-destination-endpoint)%"}},
        {"header": {"key": UPSTREAM, "value": "%UPSTREAM_REMOTE_ADDRESS%"}},
    ]
    lb_ns = "type.googleapis.com/envoy.extensions.load_balancing_policies."
    endpoints = [{"endpoint": {"address": {"socket_address": {
        "address": r.host, "port_value": r.port}}}} for r in replicas]
    static["clusters"][0] = {
        "name": "replicas", "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": "replicas",
                            "endpoints": [{"lb_endpoints": endpoints}]},
        "load_balancing_policy": {"policies": [{"typed_extension_config": {
            "name": "envoy.load_balancing_policies.override_host",
            "typed_config": {
                "@type": lb_ns + "override_host.v3.OverrideHost",
                "override_host_sources": [{"metadata": {
                    "key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}}],
                "fallback_policy": {"policies": [{"typed_extension_config": {
                    "name": "envoy.load_balancing_policies.round_robin",
                    "typed_config": {"@type": lb_ns + "round_robin.v3.RoundRobin"}}}]}}}}]},
    }
    return cfg


def users(replica: SimReplica) -> int:
    return sum(not r.warmup for r in replica.log)


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(FAST, replicas=3, distinct_hosts=True, host="127.0.0.71") as f:
        yield f


async def ask(url: str, n: int) -> list[tuple[int, list[str], str]]:
    """n completions through Envoy: (status, the endpoints Envoy got, the upstream used)."""
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.post(url + "/v1/completions",
                              json={"model": "tiny", "prompt": f"p {i}", "max_tokens": 2}) as r:
                await r.read()
                out.append((r.status, r.headers.get(SEEN, "").split(","),
                            r.headers.get(UPSTREAM, "")))
    return out


@pytest.mark.timeout(60)
async def test_envoy_routes_by_the_metadata_list_and_falls_back_down_it(
        fleet: SimFleet, tmp_path: Path) -> None:
    assert ENVOY is not None
    r0 = fleet.replicas[0]
    addr = {f"{r.host}:{r.port}": r for r in fleet.replicas}
    # health checks far apart: the EPP still picks r0 after it stops listening, as it
    # would in the seconds before its checks notice a replica that died
    cfg = gateway_config(fleet.urls, epp={"listen": {"port": 0}, "fallbacks": 1},
                         health={"interval": 60.0})
    async with Gateway(cfg) as gw:
        await wait_all_ready(gw)
        async with Envoy(ENVOY, override_host(config(gw.epp_port), fleet.replicas),
                         tmp_path) as envoy:
            for status, seen, upstream in await ask(envoy.url, 9):
                assert status == 200
                assert len(seen) == 2 and len(set(seen)) == 2 and set(seen) <= set(addr), seen
                assert upstream == seen[0]  # the pick, not round robin's choice
            assert sum(users(r) for r in fleet.replicas) == 9

            served_before = users(r0)
            await r0.stop_listening()
            answers = await ask(envoy.url, 15)
            assert [s for s, _, _ in answers] == [200] * 15
            for _, seen, upstream in answers:
                # the pick when it listens; the EPP's fallback (not any other replica) when
                # the pick refused the connection
                assert upstream == (seen[1] if addr[seen[0]] is r0 else seen[0]), seen
            assert any(addr[seen[0]] is r0 for _, seen, _ in answers), answers
            assert users(r0) == served_before  # r0 served nothing more
        assert all(e.inflight == 0 for e in gw.registry.endpoints.values())
