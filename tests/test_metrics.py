"""/metrics: Prometheus names and types, user traffic only, values that move."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import gateway_config, wait_all_ready
from warmgw.app import Gateway
from warmgw.sim import SimConfig, SimFleet


async def scrape(s: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with s.get(url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, name: str, sample: str, **labels: str) -> float:
    fam = fams[name]
    return sum(
        s.value for s in fam.samples  # type: ignore[attr-defined]
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_metrics_names_types_and_movement():
    async with SimFleet(SimConfig(ttft_base=0.002, itl=0.001), replicas=2) as fleet:
        cfg = gateway_config({"blue-0": fleet.urls[0], "blue-1": fleet.urls[1]})
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await wait_all_ready(gw)
            before = await scrape(s, gw.url)
            kinds = {
                "warmgw_requests": "counter",
                "warmgw_request_ttfb_seconds": "histogram",
                "warmgw_request_duration_seconds": "histogram",
                "warmgw_replica_inflight_requests": "gauge",
                "warmgw_replica_state": "gauge",
                "warmgw_replica_weight": "gauge",
                "warmgw_replica_transitions": "counter",
                "warmgw_warmups": "counter",
                "warmgw_warmup_requests": "counter",
                "warmgw_warmup_duration_seconds": "histogram",
                "warmgw_pool_share": "gauge",
                "warmgw_cutovers": "counter",
            }
            for name, kind in kinds.items():
                assert before[name].type == kind, name  # type: ignore[attr-defined]
            assert value(before, "warmgw_replica_state", "warmgw_replica_state",
                         replica="blue-0", state="ready") == 1.0
            assert value(before, "warmgw_pool_share", "warmgw_pool_share", pool="blue") == 1.0
            assert value(before, "warmgw_warmups", "warmgw_warmups_total",
                         outcome="converged") == 2
            warm_requests = value(before, "warmgw_warmup_requests", "warmgw_warmup_requests_total")
            assert warm_requests > 0
            # warmup traffic is not user traffic
            assert value(before, "warmgw_requests", "warmgw_requests_total") == 0

            body = {"model": "tiny", "prompt": "hello", "max_tokens": 3}
            for _ in range(10):
                async with s.post(gw.url + "/v1/completions", json=body) as r:
                    assert r.status == 200
            for _ in range(3):
                async with s.post(gw.url + "/v1/completions", json={**body, "stream": True}) as r:
                    await r.read()
            async with s.post(gw.url + "/v1/completions", json={**body, "model": "nope"}) as r:
                assert r.status == 404
            after = await scrape(s, gw.url)
            ok = value(after, "warmgw_requests", "warmgw_requests_total", route="completions",
                       code="200")
            assert ok == 13
            assert value(after, "warmgw_requests", "warmgw_requests_total", code="404",
                         replica="") == 1
            assert value(after, "warmgw_request_ttfb_seconds",
                         "warmgw_request_ttfb_seconds_count", pool="blue") == 13
            assert value(after, "warmgw_request_duration_seconds",
                         "warmgw_request_duration_seconds_sum", pool="blue") > 0
            assert value(after, "warmgw_warmup_requests",
                         "warmgw_warmup_requests_total") == warm_requests
