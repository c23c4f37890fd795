"""The gateway against the fake kube-apiserver, through a kubeconfig exactly as against a
real cluster: discovery, readiness gate, drain on deletion, relist after 410, outages,
two gateway replicas sharing warmup and the traffic policy."""

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
from warmgw.sim import SimConfig, SimFleet

from .fake_apiserver import FakeApiServer
from .fake_pods import make_pod

TOKEN = "admin-token"
NS = "default"


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    cfg = SimConfig(ttft_base=0.003, itl=0.001, cold_shape_penalty=0.2)
    async with SimFleet(cfg, replicas=3, distinct_hosts=True, host="127.0.0.11") as f:
        yield f


def kube_config(kubeconfig: Path, port: int, identity: str, **kube: Any):
    return parse({
        "listen": {"port": 0},
        "admin": {"port": 0, "token": TOKEN},
        "discovery": {"kubernetes": {
            "namespace": NS, "label_selector": "app=vllm", "pool_label": "warmgw.io/pool",
            "port": port, "kubeconfig": str(kubeconfig), "identity": identity,
            "watch_timeout": 5, "lease_duration": 3, **kube,
        }},
        "policy": {"active": "blue"},
        "warmup": FAST_WARMUP,
        "health": {"interval": 0.2, "timeout": 1.0},
        "ramp": {"doubling_time": 0.2, "initial_weight": 0.2},
    })


def add_pods(server: FakeApiServer, fleet: SimFleet, pools: list[str],
             ready: bool = False) -> list[str]:
    names = []
    for i, (sim, pool) in enumerate(zip(fleet.replicas, pools, strict=False)):
        name = f"vllm-{pool}-{i}"
        server.add_pod(make_pod(name, {"app": "vllm", "warmgw.io/pool": pool}, sim.host,
                                sim.port, containers_ready=ready))
        names.append(name)
    return names


def condition(server: FakeApiServer, name: str, type_: str) -> str | None:
    pod = server.get("pods", NS, name) or {}
    for c in pod.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return str(c["status"])
    return None


async def complete(url: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 3, **extra}
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
        return r.status, (await r.json() if not extra.get("stream") else {})


async def test_pod_becomes_ready_only_once_warmed(apiserver, kubeconfig, fleet):
    port = fleet.replicas[0].port
    (name,) = add_pods(apiserver, fleet, ["blue"])
    async with Gateway(kube_config(kubeconfig, port, "gw-a")) as gw:
        await wait_for(lambda: gw.kube is not None and gw.kube.watcher.synced.is_set(), 5)
        await asyncio.sleep(0.3)
        assert gw.registry.endpoints == {}  # containers not ready: not a candidate yet
        assert condition(apiserver, name, "Ready") == "False"

        apiserver.set_pod_containers_ready(NS, name, True)
        assert condition(apiserver, name, "Ready") == "False"  # the gate holds it back
        await wait_state(gw, name, State.RAMPING, timeout=15)
        await wait_for(lambda: condition(apiserver, name, "Ready") == "True", 5,
                       "the kubelet rule to see the gate")
        assert condition(apiserver, name, "warmgw.io/warmed") == "True"
        assert condition(apiserver, name, "ContainersReady") == "True"  # kubelet's kept
        patches = apiserver.calls("PATCH")
        assert len(patches) == 1
        assert patches[0].content_type == "application/strategic-merge-patch+json"
        assert patches[0].path == f"/api/v1/namespaces/{NS}/pods/{name}/status"
        assert fleet.replicas[0].stats.warmup_requests > 0
        assert fleet.replicas[0].stats.user_cold_hits == 0
        status, body = await complete(gw.url)
        assert status == 200 and body["usage"]["completion_tokens"] == 3


async def test_deleted_pod_drains_then_goes(apiserver, kubeconfig, fleet):
    slow = fleet.replicas[0]
    names = add_pods(apiserver, fleet, ["blue", "blue"], ready=True)
    async with Gateway(kube_config(kubeconfig, slow.port, "gw-a")) as gw:
        for n in names:
            await wait_state(gw, n, State.READY, timeout=20)
        async with aiohttp.ClientSession() as s:
            body = {"model": "tiny", "prompt": "x", "max_tokens": 150, "stream": True}
            streams = [await s.post(gw.url + "/v1/completions", json=body) for _ in range(4)]
            on = {r.headers["X-Warmgw-Replica"] for r in streams}
            victim = sorted(on)[0]
            apiserver.mark_deleting(NS, victim)
            await wait_state(gw, victim, State.DRAINING, timeout=5)
            status, _ = await complete(gw.url)
            assert status == 200
            for r in streams:
                data = await r.read()
                assert data.rstrip().endswith(b"data: [DONE]")  # ran to completion
                r.release()
        await wait_for(lambda: victim not in gw.registry.endpoints, 5, "the drained pod gone")


async def test_outage_keeps_routing_and_410_relists_without_missing(apiserver, kubeconfig, fleet):
    port = fleet.replicas[0].port
    names = add_pods(apiserver, fleet, ["blue", "blue"], ready=True)
    async with Gateway(kube_config(kubeconfig, port, "gw-a")) as gw:
        for n in names:
            await wait_state(gw, n, State.READY, timeout=20)
        assert gw.kube is not None and gw.kube.watcher.lists == 1
        await apiserver.stop_listening()
        await asyncio.sleep(0.5)
        for _ in range(5):  # the API is away: routing goes on with what it knew
            assert (await complete(gw.url))[0] == 200
        assert set(gw.registry.endpoints) == set(names)
        # meanwhile the cluster changes, and its history is compacted
        apiserver.remove(NS, names[1])
        sim = fleet.replicas[2]
        apiserver.add_pod(make_pod("vllm-blue-new", {"app": "vllm", "warmgw.io/pool": "blue"},
                                   sim.host, sim.port, containers_ready=True))
        apiserver.compact()
        await apiserver.resume_listening()
        await wait_for(lambda: gw.kube is not None and gw.kube.watcher.lists == 2, 10,
                       "a relist after 410 Expired")
        await wait_state(gw, "vllm-blue-new", State.READY, timeout=20)
        await wait_for(lambda: names[1] not in gw.registry.endpoints, 5, "the removed pod gone")
        watches = [c for c in apiserver.calls("GET", f"/api/v1/namespaces/{NS}/pods")
                   if str(c.query.get("watch", "")).lower() == "true"]
        # after the outage it watched on from its last resourceVersion, got 410, listed
        assert len(watches) >= 2 and all(c.query.get("resourceVersion") for c in watches)


async def test_restarted_container_is_cold_again(apiserver, kubeconfig, fleet):
    port = fleet.replicas[0].port
    (name,) = add_pods(apiserver, fleet, ["blue"], ready=True)
    async with Gateway(kube_config(kubeconfig, port, "gw-a")) as gw:
        await wait_state(gw, name, State.READY, timeout=20)
        apiserver.bump_restart_count(NS, name)
        await wait_for(lambda: condition(apiserver, name, "warmgw.io/warmed") == "False", 5,
                       "the gate set back to False")
        moves = [(t.frm, t.to) for t in gw.registry.history if t.name == name]
        assert (State.READY, State.EJECTED) in moves
        apiserver.set_pod_containers_ready(NS, name, True)  # its startup probe passes
        await wait_for(lambda: condition(apiserver, name, "warmgw.io/warmed") == "True",
                       20, "the pod warmed again")
        warmings = [t for t in gw.registry.history
                    if t.name == name and t.frm is State.WARMING and t.to is State.RAMPING]
        assert len(warmings) == 2
        bodies = [c.body for c in apiserver.calls("PATCH")]
        assert all("restartCount=" in str(b) for b in bodies)


async def admin(gw: Gateway, path: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(
        gw.admin_url + "/admin/v1" + path, json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as r:
        return r.status, await r.json()


async def test_two_gateways_warm_once_and_share_the_policy(apiserver, kubeconfig, fleet):
    port = fleet.replicas[0].port
    names = add_pods(apiserver, fleet, ["blue", "blue", "green"], ready=True)
    cfg_a = kube_config(kubeconfig, port, "gw-a")
    cfg_b = kube_config(kubeconfig, port, "gw-b")
    async with Gateway(cfg_a) as a, Gateway(cfg_b) as b:
        for gw in (a, b):
            for n in names:
                await wait_state(gw, n, State.READY, timeout=30)
        warmed_here = {
            gw.kube.identity: sorted(  # type: ignore[union-attr]
                t.name for t in gw.registry.history
                if t.frm is State.WARMING and t.to is State.RAMPING
                and t.reason.startswith("warm: converged")
            )
            for gw in (a, b)
        }
        assert sorted(warmed_here["gw-a"] + warmed_here["gw-b"]) == sorted(names), warmed_here
        for sim in fleet.replicas:  # one warmup's worth of requests per pod, not two
            assert 0 < sim.stats.warmup_requests <= a.supervisor.warmer.requests_sent + \
                b.supervisor.warmer.requests_sent  # type: ignore[union-attr]
        leases = apiserver.objects("leases", NS)
        assert sorted(x["metadata"]["name"] for x in leases) == sorted(
            f"warmgw-warm-{n}" for n in names)

        status, res = await admin(a, "/cutover", {"to": "green", "force": True})
        assert status == 200, res
        await wait_for(lambda: b.bluegreen.active == "green", 10, "gw-b to follow the cutover")
        assert b.registry.policy.as_dict() == {"green": 1.0}
        status, res = await admin(b, "/rollback", {"force": True})
        assert status == 200, res
        await wait_for(lambda: a.bluegreen.active == "blue", 10, "gw-a to follow the rollback")
        cms = apiserver.objects("configmaps", NS)
        assert [c["metadata"]["name"] for c in cms] == ["warmgw-policy"]
        # conflicting cutovers through both replicas at once: one wins
        results = await asyncio.gather(
            admin(a, "/cutover", {"to": "green", "force": True, "from": "blue"}),
            admin(b, "/cutover", {"to": "green", "force": True, "from": "blue"}),
        )
        assert sorted(s for s, _ in results) == [200, 409], results
        await wait_for(lambda: a.bluegreen.active == b.bluegreen.active == "green", 10)
