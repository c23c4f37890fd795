"""The gateway discovering its replicas from an InferencePool (inference.networking.k8s.io/v1)
on the fake kube-apiserver: the pool's selector and target port pick the pods, which are
warmed and gated as with a label selector; a changed selector moves pods in and out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers import FAST_WARMUP, wait_for, wait_state
from warmgw.app import Gateway
from warmgw.config import Config, ConfigError, parse
from warmgw.core.lifecycle import State
from warmgw.discovery.inferencepool import InvalidPool, PoolDiscovery, PoolSpec, pool_spec

from .fake_apiserver import FakeApiServer
from .fake_pods import make_pod
from .test_gateway_kubernetes import NS, TOKEN, complete, condition, fleet  # noqa: F401

POOL = "/apis/inference.networking.k8s.io/v1/namespaces/default/inferencepools"


def pool_config(kubeconfig: Path, identity: str = "gw-a") -> Config:
    return parse({
        "listen": {"port": 0},
        "admin": {"port": 0, "token": TOKEN},
        "discovery": {"kubernetes": {
            "namespace": NS, "inference_pool": "llama", "pool_label": "warmgw.io/pool",
            "kubeconfig": str(kubeconfig), "identity": identity, "watch_timeout": 5,
            "lease_duration": 3,
        }},
        "policy": {"active": "blue"},
        "warmup": FAST_WARMUP,
        "health": {"interval": 0.2, "timeout": 1.0},
        "ramp": {"doubling_time": 0.2, "initial_weight": 0.2},
    })


def _pool(spec: dict[str, object]) -> dict[str, object]:
    return {"metadata": {"name": "p"}, "spec": spec}


@pytest.mark.parametrize(("spec", "expect"), [
    ({"selector": {"matchLabels": {"b": "2", "a": "1"}}, "targetPorts": [{"number": 8000}]},
     PoolSpec("a=1,b=2", 8000, None, "FailClose")),
    ({"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 9}],
      "endpointPickerRef": {"name": "epp", "port": {"number": 9002}, "failureMode": "FailOpen"}},
     PoolSpec("app=x", 9, "epp:9002", "FailOpen")),
])
def test_pool_spec(spec: dict[str, object], expect: PoolSpec) -> None:
    assert pool_spec(_pool(spec)) == expect


@pytest.mark.parametrize("spec", [
    {"selector": {"matchLabels": {}}, "targetPorts": [{"number": 8000}]},
    {"selector": {"matchLabels": {"a": "1"}}, "targetPorts": []},
    {"selector": {"matchLabels": {"a": "1"}}, "targetPorts": [{"number": 0}]},
    {"selector": {"matchLabels": {"a": "1"}}, "targetPorts": [{"number": "80"}]},
])
def test_invalid_pool_spec(spec: dict[str, object]) -> None:
    with pytest.raises(InvalidPool):
        pool_spec(_pool(spec))


def test_inference_pool_wants_the_pods_source() -> None:
    with pytest.raises(ConfigError, match=r"discovery\.kubernetes\.source: .*inference_pool"):
        parse({"discovery": {"kubernetes": {"inference_pool": "p", "source": "endpointslices",
                                            "service": "s"}},
               "policy": {"active": "blue"}})


async def test_pool_pods_are_warmed_and_gated(apiserver: FakeApiServer, kubeconfig: Path,
                                              fleet) -> None:  # noqa: F811
    port = fleet.replicas[0].port
    names = []
    for i, sim in enumerate(fleet.replicas[:2]):
        names.append(f"llama-{i}")
        apiserver.add_pod(make_pod(names[-1], {"app": "llama", "warmgw.io/pool": "blue"},
                                   sim.host, sim.port, containers_ready=True))
    other = fleet.replicas[2]  # picked by no pool
    apiserver.add_pod(make_pod("other-0", {"app": "other"}, other.host, other.port,
                               containers_ready=True))
    apiserver.put_inference_pool(NS, "llama", {"app": "llama"}, port)
    async with Gateway(pool_config(kubeconfig)) as gw:
        assert isinstance(gw.kube, PoolDiscovery)
        for n in names:
            await wait_state(gw, n, State.RAMPING, timeout=15)
            await wait_for(lambda n=n: condition(apiserver, n, "Ready") == "True", 5,
                           f"{n} gated Ready")
        assert set(gw.registry.endpoints) == set(names)
        assert gw.registry.endpoints[names[0]].url == f"http://{fleet.replicas[0].host}:{port}"
        assert gw.kube.pool is not None and gw.kube.pool.failure_mode == "FailClose"
        assert condition(apiserver, "other-0", "Ready") == "False"  # never warmed
        assert other.stats.warmup_requests == 0
        assert all(s.stats.warmup_requests > 0 for s in fleet.replicas[:2])
        # the pool object is read with a field selector on its name, then watched
        pool_reads = apiserver.calls("GET", POOL)
        assert pool_reads and all(r.query.get("fieldSelector") == "metadata.name=llama"
                                  for r in pool_reads)
        assert any(r.query.get("watch") == "true" for r in pool_reads)
        for n in names:  # one warmup Lease per pod, as with a label selector
            lease = apiserver.get("leases", NS, f"warmgw-warm-{n}")
            assert lease is not None and lease["spec"]["holderIdentity"] == "gw-a"
        status, body = await complete(gw.url)
        assert status == 200 and body["usage"]["completion_tokens"] == 3


async def test_pool_selector_change_moves_pods(apiserver: FakeApiServer, kubeconfig: Path,
                                               fleet) -> None:  # noqa: F811
    port = fleet.replicas[0].port
    a, b, c = fleet.replicas
    apiserver.add_pod(make_pod("v1-0", {"app": "llama", "ver": "1", "warmgw.io/pool": "blue"},
                               a.host, a.port, containers_ready=True))
    apiserver.add_pod(make_pod("v12-0", {"app": "llama", "ver": "1", "v2": "yes",
                                         "warmgw.io/pool": "blue"},
                               b.host, b.port, containers_ready=True))
    apiserver.add_pod(make_pod("v2-0", {"app": "llama", "v2": "yes", "warmgw.io/pool": "blue"},
                               c.host, c.port, containers_ready=True))
    apiserver.put_inference_pool(NS, "llama", {"app": "llama", "ver": "1"}, port)
    async with Gateway(pool_config(kubeconfig)) as gw:
        assert isinstance(gw.kube, PoolDiscovery)
        await wait_state(gw, "v1-0", State.READY, timeout=20)
        await wait_state(gw, "v12-0", State.READY, timeout=20)
        assert "v2-0" not in gw.registry.endpoints
        kept = gw.registry.endpoints["v12-0"]

        apiserver.put_inference_pool(NS, "llama", {"app": "llama", "v2": "yes"}, port)
        await wait_for(lambda: "v1-0" not in gw.registry.endpoints, 5, "v1-0 drained and gone")
        await wait_state(gw, "v2-0", State.READY, timeout=20)
        assert gw.registry.endpoints["v12-0"] is kept  # in both: untouched, still ready
        assert kept.state is State.READY
        assert c.stats.warmup_requests > 0
        await wait_for(lambda: condition(apiserver, "v2-0", "Ready") == "True", 5)

        # the pod picked no more is not watched: its changes do not bring it back
        apiserver.bump_restart_count(NS, "v1-0", containers_ready=True)
        await asyncio.sleep(0.3)
        assert "v1-0" not in gw.registry.endpoints
        before = a.stats.user_requests
        for _ in range(6):
            status, _ = await complete(gw.url)
            assert status == 200
        assert a.stats.user_requests == before  # users reach the pool's pods only

        # a new target port: the same pods, re-specced to it (and probed there again)
        apiserver.put_inference_pool(NS, "llama", {"app": "llama", "v2": "yes"}, port + 1)
        await wait_for(lambda: all(ep.url.endswith(f":{port + 1}")
                                   for ep in gw.registry.endpoints.values()), 5, "new port")
        assert set(gw.registry.endpoints) == {"v12-0", "v2-0"}
        assert gw.registry.endpoints["v12-0"].state is not State.READY  # nothing listens
