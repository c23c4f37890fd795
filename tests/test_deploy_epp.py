"""deploy/epp: warmgw as the Endpoint Picker of an InferencePool. The pieces fit (the
pool's selector picks the deploy/vllm pods on their port, its endpointPickerRef names the
EPP Service's gRPC port, the HTTPRoute sends to the pool, the config names them), and the
real EPP, run with the shipped config against the fake API server, makes no request the
shipped Role would refuse and uses every verb it grants (see tests/test_deploy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.helpers import FAST_WARMUP, wait_for
from tests.k8s.fake_apiserver import (
    CONFIGMAPS,
    HTTPROUTES,
    INFERENCEPOOLS,
    LEASES,
    FakeApiServer,
)
from tests.test_deploy import (
    EPP,
    GATE,
    JSON,
    VLLM,
    allowed,
    condition,
    container,
    match_labels,
    one,
    pod_from_template,
    port_number,
    render,
    request_attributes,
)
from warmgw.app import Gateway
from warmgw.config import Config, parse
from warmgw.core.lifecycle import State
from warmgw.discovery.httproute import weights_of
from warmgw.sim import SimConfig, SimFleet

# Granted but not called: `get` on pods and on the pool (list/watch show the same).
GRANTED_UNUSED = {("", "pods", "get"), ("inference.networking.k8s.io", "inferencepools", "get")}


@pytest.fixture(scope="module")
def objects() -> list[JSON]:
    return render(EPP)


@pytest.fixture(scope="module")
def raw_config(objects: list[JSON]) -> JSON:
    text = one(objects, "ConfigMap", "warmgw-epp-config")["data"]["config.yaml"]
    return dict(yaml.safe_load(text))


@pytest.fixture(scope="module")
def cfg(raw_config: JSON) -> Config:
    return parse(json.loads(json.dumps(raw_config)), source="deploy/epp/config.yaml")


def test_the_epp_pieces_fit(objects: list[JSON], cfg: Config) -> None:
    kube, epp = cfg.kubernetes, cfg.epp
    assert kube is not None and epp is not None
    deployment = one(objects, "Deployment", "warmgw-epp")
    c = container(deployment)
    assert c["args"][:1] == ["epp"] and c["args"][1:] == ["--config", "/etc/warmgw/config.yaml"]
    assert port_number(c, "grpc") == epp.port == 9002
    for probe, service in (("readinessProbe", "readiness"), ("livenessProbe", "liveness")):
        assert c[probe]["grpc"] == {"port": epp.port, "service": service}
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": "warmgw-epp-config"}} in volumes

    svc = one(objects, "Service", "warmgw-epp")
    assert match_labels({"matchLabels": svc["spec"]["selector"]},
                        deployment["spec"]["template"]["metadata"]["labels"])
    grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert port_number(c, grpc["targetPort"]) == epp.port
    assert grpc["appProtocol"] == "http2"  # ext_proc is gRPC: Envoy must speak HTTP/2

    pool = one(objects, "InferencePool")
    assert pool["metadata"]["name"] == kube.inference_pool
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] == svc["metadata"]["name"] and ref["port"]["number"] == grpc["port"]
    assert ref["failureMode"] == "FailClose"
    # the pool picks both colours of deploy/vllm, on the port vLLM listens on
    for d in render(VLLM):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert match_labels(pool["spec"]["selector"], labels), d["metadata"]["name"]
        assert labels[kube.pool_label] in ("blue", "green")
        assert pool["spec"]["targetPorts"] == [{"number": port_number(container(d), "http")}]

    route = one(objects, "HTTPRoute")
    assert route["metadata"]["name"] == kube.http_route
    assert weights_of(route) == {kube.inference_pool: 100}

    role = one(objects, "Role", "warmgw-epp")
    named = {r["resources"][0]: r.get("resourceNames") for r in role["rules"]}
    assert named["inferencepools"] == [kube.inference_pool]
    assert named["httproutes"] == [kube.http_route]
    assert named["configmaps"] == [kube.policy_configmap]
    one(objects, "ConfigMap", kube.policy_configmap)
    binding = one(objects, "RoleBinding", "warmgw-epp")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    one(objects, "ServiceAccount", account)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    assert binding["roleRef"]["name"] == "warmgw-epp"


async def test_the_epp_needs_no_more_than_the_role_grants(
        tmp_path: Path, objects: list[JSON], raw_config: JSON) -> None:
    raw = json.loads(json.dumps(raw_config))
    kube = raw["discovery"]["kubernetes"]
    ns = kube["namespace"]
    role = one(objects, "Role", "warmgw-epp")
    token = "admin-token"
    sim = SimConfig(ttft_base=0.003, itl=0.001)
    async with FakeApiServer() as server, SimFleet(sim, replicas=2, distinct_hosts=True,
                                                   host="127.0.0.51") as fleet:
        port = fleet.replicas[0].port
        server.cluster.create(CONFIGMAPS, ns, json.loads(json.dumps(
            one(objects, "ConfigMap", kube["policy_configmap"]))))
        pool = json.loads(json.dumps(one(objects, "InferencePool")))
        pool["spec"]["targetPorts"] = [{"number": port}]  # where the simulated vLLM listens
        server.cluster.create(INFERENCEPOOLS, ns, pool)
        server.cluster.create(HTTPROUTES, ns, json.loads(json.dumps(one(objects, "HTTPRoute"))))
        pods = {}
        for colour, replica in zip(("blue", "green"), fleet.replicas, strict=True):
            pod = pod_from_template(one(render(VLLM), "Deployment", f"vllm-{colour}"),
                                    "5c9d8b7f4-q8w2n", replica.host, port, ns)
            server.add_pod(pod)
            pods[colour] = pod["metadata"]["name"]
        # a warmup Lease left by an EPP pod that is gone: taken over with an update
        server.cluster.create(LEASES, ns, {
            "metadata": {"name": f"warmgw-warm-{pods['green']}"},
            "spec": {"holderIdentity": "warmgw-epp-gone", "leaseDurationSeconds": 15,
                     "acquireTime": "2020-01-01T00:00:00.000000Z",
                     "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 0}})
        server.clear_requests()

        kube.update(kubeconfig=str(server.write_kubeconfig(tmp_path / "kubeconfig")),
                    identity="warmgw-epp-test-0", watch_timeout=5, lease_duration=3)
        raw["listen"].update(host="127.0.0.1", port=0)
        raw["admin"].update(host="127.0.0.1", port=0, token=token)
        raw["epp"]["listen"].update(host="127.0.0.1", port=0)
        raw.update(warmup=FAST_WARMUP, health={"interval": 0.2, "timeout": 1.0},
                   ramp={"doubling_time": 0.2, "initial_weight": 0.2})
        async with Gateway(parse(raw)) as gw:
            assert gw.epp_port
            for name in pods.values():
                await wait_for(lambda n=name: n in gw.registry.endpoints and gw.registry
                               .endpoints[n].state in (State.RAMPING, State.READY), 30,
                               f"{name} warmed")
                await wait_for(lambda n=name: condition(server, ns, n, "Ready") == "True", 10,
                               f"{name} Ready through {GATE}")
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(headers=headers) as s:
                async with s.post(gw.admin_url + "/admin/v1/cutover",
                                  json={"to": "green", "force": True}) as r:
                    assert r.status == 200, await r.text()
                async with s.post(gw.admin_url + "/admin/v1/route",
                                  json={"to": kube["inference_pool"]}) as r:
                    assert r.status == 200, await r.text()
            await wait_for(lambda: any(c.method == "PUT" and "/configmaps/" in c.path
                                       for c in server.requests), 10, "the policy stored")

    assert all(c.status is None or c.status < 500 for c in server.requests)
    used, denied = set(), []
    for c in server.requests:
        group, resource, verb, name = request_attributes(c.method, c.path, c.query)
        if not allowed(role["rules"], group, resource, verb, name):
            denied.append((c.method, c.path, c.query))
        used.add((group, resource, verb))
    assert not denied, f"the shipped Role would refuse: {denied}"
    granted = {(g, res, v) for r in role["rules"] for g in r["apiGroups"]
               for res in r["resources"] for v in r["verbs"]}
    assert granted - used == GRANTED_UNUSED, f"granted but never used: {granted - used}"
