"""Pure parts of the new discovery sources: reading EndpointSlices, and their config."""

from __future__ import annotations

from typing import Any

import pytest

from warmgw.config import ConfigError, parse
from warmgw.discovery.slices import endpoints_of, slice_port


def _slice(endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None,
           labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "s", "labels": labels or {}}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000}] if ports is None else ports,
            "endpoints": endpoints}


POD = {"kind": "Pod", "namespace": "ns", "name": "vllm-0"}


@pytest.mark.parametrize(("conditions", "serving", "terminating"), [
    ({}, True, False),  # missing: serving and ready count as true
    ({"ready": False}, False, False),  # no serving: falls back to ready
    ({"ready": False, "serving": False, "terminating": False}, False, False),  # cold/broken
    ({"ready": True, "serving": False}, False, False),  # publishNotReadyAddresses
    ({"ready": False, "serving": True, "terminating": True}, True, True),  # shutting down
])
def test_endpoint_conditions(conditions, serving, terminating):
    ep = {"addresses": ["10.0.0.1"], "conditions": conditions, "targetRef": POD}
    (got,) = endpoints_of(_slice([ep]), None, 9, "pool").values()
    assert (got.serving, got.terminating) == (serving, terminating)


def test_names_ports_and_pool():
    eps = [{"addresses": ["10.0.0.1", "10.0.0.9"], "targetRef": POD},
           {"addresses": ["fd00::2"]},
           {"addresses": []}]
    s = _slice(eps, ports=[{"name": "metrics", "port": 9090}, {"name": "http", "port": 8001}],
               labels={"warmgw.io/pool": "green"})
    got = endpoints_of(s, "http", 9, "warmgw.io/pool")
    assert sorted(got) == ["fd00::2", "vllm-0"]
    assert got["vllm-0"].spec(None).url == "http://10.0.0.1:8001"
    assert got["fd00::2"].spec("m").url == "http://[fd00::2]:8001"
    assert {e.pool for e in got.values()} == {"green"}
    assert endpoints_of(s, "grpc", 9, "p") == {}  # no port of that name: nothing to reach
    assert endpoints_of(s, None, 9, "p")["vllm-0"].port == 9090  # the first


@pytest.mark.parametrize(("ports", "name", "want"), [
    (None, None, 7), ([], "http", None), ([{"name": "http"}], "http", 7),
    ([{"name": "a", "port": 1}, {"name": "b", "port": 2}], "b", 2),
])
def test_slice_port(ports, name, want):
    assert slice_port(ports, name, 7) == want


@pytest.mark.parametrize(("discovery", "extra", "error"), [
    ({"dns": {"type": "A"}}, {}, "discovery.dns.name: required"),
    ({"dns": {"name": "x", "type": "MX"}}, {}, "discovery.dns.type: expected A, AAAA or SRV"),
    ({"dns": {"name": "x", "interval": 0}}, {}, "discovery.dns: expected interval > 0"),
    ({"dns": {"name": "x"}}, {"replicas": ["http://a:1"]}, "give one source of replicas"),
    ({"dns": {"name": "x"}, "kubernetes": {}}, {"policy": {"active": "a"}},
     "give one source of replicas"),
    ({"kubernetes": {"source": "endpointslices"}}, {"policy": {"active": "a"}},
     "discovery.kubernetes.service: required"),
    ({"kubernetes": {"source": "nodes"}}, {"policy": {"active": "a"}},
     "discovery.kubernetes.source: expected pods or endpointslices"),
])
def test_config_errors(discovery, extra, error):
    with pytest.raises(ConfigError, match=error):
        parse({"discovery": discovery, **extra})


def test_config_defaults():
    cfg = parse({"discovery": {"dns": {"name": "vllm.llm.svc", "pool": "blue"}}})
    assert cfg.dns is not None and (cfg.dns.type, cfg.dns.port) == ("A", 8000)
    assert cfg.active_pool == "blue"  # the pool DNS replicas are in serves
    k = parse({"discovery": {"kubernetes": {"source": "endpointslices", "service": "v",
                                            "slice_selector": "tier=gpu"}},
               "policy": {"active": "blue"}}).kubernetes
    assert k is not None and k.slice_labels == "kubernetes.io/service-name=v,tier=gpu"
