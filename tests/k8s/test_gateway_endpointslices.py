"""The gateway discovering replicas from EndpointSlices, against the fake kube-apiserver
whose EndpointSlice controller writes the slices (conditions, chunks of at most N, Service
labels copied) as the real one does.

A pod held back by the warmup gate is Ready=False, so its slice entry is ready=false AND
serving=false (serving is the pod's Ready condition): the slice alone cannot tell it from
a broken pod, and the gateway learns from the pod (its containers ready) that it is cold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import FAST_WARMUP, wait_for, wait_state
from warmgw.app import Gateway
from warmgw.config import parse
from warmgw.core.lifecycle import State
from warmgw.discovery.endpointslices import SliceDiscovery
from warmgw.sim import SimConfig, SimFleet

from .fake_apiserver import ENDPOINTSLICES, FakeApiServer
from .fake_pods import make_pod

NS = "default"
SVC = "vllm-blue"


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    cfg = SimConfig(ttft_base=0.003, itl=0.001, cold_shape_penalty=0.2)
    async with SimFleet(cfg, replicas=3, distinct_hosts=True, host="127.0.0.21") as f:
        yield f


def slice_config(kubeconfig: Path, identity: str = "gw-a", **kube: Any):
    return parse({
        "listen": {"port": 0},
        "discovery": {"kubernetes": {
            "source": "endpointslices", "service": SVC, "port_name": "http",
            "namespace": NS, "label_selector": "app=vllm", "kubeconfig": str(kubeconfig),
            "identity": identity, "watch_timeout": 5, "lease_duration": 3, **kube,
        }},
        "policy": {"active": "blue"},
        "warmup": FAST_WARMUP,
        "health": {"interval": 0.2, "timeout": 1.0},
        "ramp": {"doubling_time": 0.2, "initial_weight": 0.2},
    })


def setup(server: FakeApiServer, fleet: SimFleet, count: int, ready: bool = True,
          **svc: Any) -> list[str]:
    """The Service (labelled with its pool) and `count` pods behind it, one per sim."""
    server.add_service(NS, SVC, {"app": "vllm"}, fleet.replicas[0].port,
                       labels={"warmgw.io/pool": "blue"}, **svc)
    names = []
    for i, sim in enumerate(fleet.replicas[:count]):
        names.append(f"vllm-{i}")
        server.add_pod(make_pod(names[-1], {"app": "vllm"}, sim.host, sim.port,
                                containers_ready=ready))
    return names


def slice_entry(server: FakeApiServer, pod: str) -> dict[str, Any]:
    for s in server.endpoint_slices(NS, SVC):
        for ep in s.get("endpoints") or []:
            if ep["targetRef"]["name"] == pod:
                return dict(ep["conditions"])
    raise AssertionError(f"{pod} is in no slice of {SVC}")


def condition(server: FakeApiServer, name: str, type_: str) -> str | None:
    for c in (server.get("pods", NS, name) or {}).get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return str(c["status"])
    return None


async def complete(url: str) -> int:
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 3}
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
        await r.read()
        return r.status


def slices(gw: Gateway) -> SliceDiscovery:
    assert isinstance(gw.kube, SliceDiscovery)
    return gw.kube


async def test_cold_pod_is_warmed_from_its_slice_and_gated(apiserver, kubeconfig, fleet):
    (name,) = setup(apiserver, fleet, 1, ready=False)
    async with Gateway(slice_config(kubeconfig)) as gw:
        await wait_for(lambda: slices(gw).watcher.synced.is_set(), 5)
        await asyncio.sleep(0.3)
        assert gw.registry.endpoints == {}  # in the slice, but its containers are not ready

        apiserver.set_pod_containers_ready(NS, name, True)
        # the gate holds Ready back, and the controller copies that into the slice
        assert slice_entry(apiserver, name) == {"ready": False, "serving": False,
                                                "terminating": False}
        await wait_state(gw, name, State.RAMPING, timeout=15)  # offered for warming
        await wait_for(lambda: condition(apiserver, name, "Ready") == "True", 5,
                       "the gate set, the pod Ready")
        patches = apiserver.calls("PATCH")
        assert [(p.path, p.content_type) for p in patches] == [
            (f"/api/v1/namespaces/{NS}/pods/{name}/status",
             "application/strategic-merge-patch+json")]
        await wait_for(lambda: slice_entry(apiserver, name)["serving"] is True, 5)
        assert gw.registry.endpoints[name].url == f"http://{fleet.replicas[0].host}:" \
                                                  f"{fleet.replicas[0].port}"
        assert gw.registry.endpoints[name].pool == "blue"  # the Service's label, on the slice
        assert fleet.replicas[0].stats.warmup_requests > 0
        assert await complete(gw.url) == 200
        assert fleet.replicas[0].stats.user_cold_hits == 0
        leases = [x["metadata"]["name"] for x in apiserver.objects("leases", NS)]
        assert leases == [f"warmgw-warm-{name}"]


async def test_terminating_endpoint_drains_and_removed_pod_goes(apiserver, kubeconfig, fleet):
    names = setup(apiserver, fleet, 2)
    async with Gateway(slice_config(kubeconfig)) as gw:
        for n in names:
            await wait_state(gw, n, State.READY, timeout=20)
        apiserver.mark_deleting(NS, names[0])
        assert slice_entry(apiserver, names[0]) == {"ready": False, "serving": True,
                                                    "terminating": True}
        await wait_for(lambda: names[0] not in gw.registry.endpoints, 5, "drained and gone")
        moves = [(t.frm, t.to) for t in gw.registry.history if t.name == names[0]]
        assert (State.READY, State.DRAINING) in moves
        for _ in range(5):
            assert await complete(gw.url) == 200
        apiserver.remove(NS, names[1])
        await wait_for(lambda: names[1] not in gw.registry.endpoints, 5, "removed pod gone")


async def test_slice_relist_after_410(apiserver, kubeconfig, fleet):
    names = setup(apiserver, fleet, 2)
    async with Gateway(slice_config(kubeconfig)) as gw:
        for n in names:
            await wait_state(gw, n, State.READY, timeout=20)
        assert slices(gw).watcher.lists == 1
        await apiserver.stop_listening()
        await asyncio.sleep(0.3)
        apiserver.remove(NS, names[1])
        sim = fleet.replicas[2]
        apiserver.add_pod(make_pod("vllm-new", {"app": "vllm"}, sim.host, sim.port,
                                   containers_ready=True))
        apiserver.compact()
        assert (await complete(gw.url)) == 200  # the API is away: routing goes on
        await apiserver.resume_listening()
        await wait_for(lambda: slices(gw).watcher.lists == 2, 10, "a relist after 410")
        await wait_state(gw, "vllm-new", State.READY, timeout=20)
        await wait_for(lambda: names[1] not in gw.registry.endpoints, 5, "the removed pod gone")
        path = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
        lists = [c for c in apiserver.calls("GET", path) if not c.query.get("watch")]
        assert len(lists) == 2
        assert lists[0].query["labelSelector"] == f"kubernetes.io/service-name={SVC}"


async def test_endpoints_moving_between_slices_stay(tmp_path, fleet):
    async with FakeApiServer(max_endpoints_per_slice=1) as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        names = setup(server, fleet, 3)
        async with Gateway(slice_config(kubeconfig)) as gw:
            for n in names:
                await wait_state(gw, n, State.READY, timeout=20)
            assert len(server.endpoint_slices(NS, SVC)) == 3
            before = {s["metadata"]["name"]: s["endpoints"][0]["targetRef"]["name"]
                      for s in server.endpoint_slices(NS, SVC)}
            server.remove(NS, names[0])  # each remaining endpoint moves to another slice
            await wait_for(lambda: names[0] not in gw.registry.endpoints, 5)
            after = {s["metadata"]["name"]: s["endpoints"][0]["targetRef"]["name"]
                     for s in server.endpoint_slices(NS, SVC)}
            assert all(before.get(s) != pod for s, pod in after.items())  # they did move
            for n in names[1:]:
                assert gw.registry.endpoints[n].state is State.READY
                assert not [t for t in gw.registry.history
                            if t.name == n and t.to is State.DRAINING]


async def test_endpoint_without_pod_is_named_by_address(apiserver, kubeconfig, fleet):
    sim = fleet.replicas[0]
    apiserver.cluster.create(ENDPOINTSLICES, NS, {
        "metadata": {"name": "external-1", "labels": {
            "kubernetes.io/service-name": SVC, "warmgw.io/pool": "blue",
            "endpointslice.kubernetes.io/managed-by": "example.com/my-controller"}},
        "addressType": "IPv4",
        "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": sim.port}],
        "endpoints": [{"addresses": [sim.host], "conditions": {"ready": True}}],
    })
    async with Gateway(slice_config(kubeconfig)) as gw:
        await wait_state(gw, sim.host, State.READY, timeout=20)
        assert gw.registry.endpoints[sim.host].url == f"http://{sim.host}:{sim.port}"
        assert await complete(gw.url) == 200
        assert apiserver.calls("PATCH") == []  # no pod to gate
