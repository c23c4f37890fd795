"""Blue-green across two InferencePools: the admin API re-weighs the HTTPRoute's
backendRefs through the (fake) API server. The Gateway implementation applies it later;
what is checked here is the PATCH and the route the API server then holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.test_cli_ops import warmgw
from warmgw.app import Gateway
from warmgw.config import parse
from warmgw.discovery.httproute import RouteError, RouteSwitch, reweighed, wanted, weights_of
from warmgw.discovery.kapi import KubeApi

from .fake_apiserver import FakeApiServer

NS, TOKEN = "default", "admin-token"
ROUTE = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/llm-route"


def route(**weights: int) -> dict[str, Any]:
    refs = [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": n,
             "weight": w} for n, w in weights.items()]
    refs.append({"kind": "Service", "name": "fallback", "weight": 5})  # not a pool: untouched
    return {"spec": {"rules": [{"backendRefs": refs}]}}


@pytest.mark.parametrize(("to", "weights", "expect"), [
    ("b", None, {"a": 0, "b": 100}),
    ("a", None, {"a": 100, "b": 0}),
    (None, {"a": 10, "b": 90}, {"a": 10, "b": 90}),
    (None, {"b": 0}, {"b": 0}),  # a stays at 50
])
def test_wanted_weights(to: str | None, weights: dict[str, int] | None,
                        expect: dict[str, int]) -> None:
    r = route(a=50, b=50)
    assert wanted(r, to, weights) == expect
    rules = reweighed(r, expect)
    assert weights_of({"spec": {"rules": rules}}) == {"a": 50, "b": 50, **expect}
    assert rules[0]["backendRefs"][-1] == {"kind": "Service", "name": "fallback", "weight": 5}


@pytest.mark.parametrize(("to", "weights", "status"), [
    ("c", None, 404),
    (None, {"c": 1}, 404),
    (None, {"a": -1}, 400),
    (None, {"a": 0, "b": 0}, 400),  # nowhere to go
    (None, None, 400),
])
def test_refused_weights(to: str | None, weights: dict[str, int] | None, status: int) -> None:
    with pytest.raises(RouteError) as e:
        wanted(route(a=50, b=50), to, weights)
    assert e.value.status == status


async def admin(gw: Gateway, method: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(
            method, gw.admin_url + "/admin/v1/route", json=body,
            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return r.status, await r.json()


async def test_admin_switches_the_httproute_weights(apiserver: FakeApiServer,
                                                    kubeconfig: Path) -> None:
    for pool in ("pool-blue", "pool-green"):
        apiserver.put_inference_pool(NS, pool, {"app": pool}, 8000)
    apiserver.put_http_route(NS, "llm-route", "inference-gateway",
                             {"pool-blue": 100, "pool-green": 0})
    cfg = parse({
        "listen": {"port": 0}, "admin": {"port": 0, "token": TOKEN},
        "discovery": {"kubernetes": {
            "namespace": NS, "inference_pool": "pool-blue", "http_route": "llm-route",
            "kubeconfig": str(kubeconfig), "identity": "gw-a", "watch_timeout": 5}},
        "policy": {"active": "blue"},
    })
    async with Gateway(cfg) as gw:
        assert await admin(gw, "GET") == (200, {
            "route": "llm-route", "weights": {"pool-blue": 100, "pool-green": 0}})
        before = apiserver.get("httproutes", NS, "llm-route")
        assert before is not None
        apiserver.clear_requests()

        status, body = await admin(gw, "POST", {"to": "pool-green"})
        assert status == 200, body
        assert body["weights"] == {"pool-blue": 0, "pool-green": 100}
        assert "not instant" in body["note"]
        stored = apiserver.get("httproutes", NS, "llm-route")
        assert stored is not None
        assert weights_of(stored) == {"pool-blue": 0, "pool-green": 100}
        # only the weights changed: parents, matches, refs' identity are as they were
        assert stored["spec"]["parentRefs"] == before["spec"]["parentRefs"]
        assert stored["spec"]["rules"][0]["matches"] == before["spec"]["rules"][0]["matches"]
        (patch,) = apiserver.calls("PATCH", ROUTE)
        assert patch.content_type.split(";")[0] == "application/merge-patch+json"
        assert patch.body["metadata"]["resourceVersion"] == before["metadata"][
            "resourceVersion"]  # guarded: never overwrites a change made since the read

        status, body = await admin(gw, "POST", {"weights": {"pool-blue": 10,
                                                            "pool-green": 90}})
        assert status == 200 and body["weights"] == {"pool-blue": 10, "pool-green": 90}
        status, body = await admin(gw, "POST", {"to": "pool-purple"})
        assert status == 404 and "pool-purple" in body["error"]["message"]
        status, body = await admin(gw, "POST", {"weights": {"pool-blue": 0, "pool-green": 0}})
        assert status == 400
        assert weights_of(apiserver.get("httproutes", NS, "llm-route") or {}) == {
            "pool-blue": 10, "pool-green": 90}  # refusals changed nothing
        # the operator's CLI
        code, out, err = await warmgw(gw, "route", "--to", "pool-blue", token=TOKEN)
        assert code == 0, err
        assert "pool-blue=100, pool-green=0" in out and "not instant" in out
        code, out, _ = await warmgw(gw, "route", token=TOKEN)
        assert code == 0 and out == "HTTPRoute llm-route: pool-blue=100, pool-green=0\n"


async def test_route_changed_between_read_and_write_is_read_again(
        apiserver: FakeApiServer, kubeconfig: Path) -> None:
    apiserver.put_http_route(NS, "llm-route", "gw", {"a": 100, "b": 0})
    api = KubeApi(str(kubeconfig))
    await api.start()
    try:
        switch = RouteSwitch(api, NS, "llm-route")
        real_read = switch.read
        raced = []

        async def racing_read() -> dict[str, Any]:
            obj = await real_read()
            if not raced:  # someone else writes the route right after our first read
                raced.append(apiserver.put_http_route(NS, "llm-route", "gw",
                                                      {"a": 100, "b": 0, "c": 0}))
            return obj

        switch.read = racing_read  # type: ignore[method-assign]
        assert await switch.switch(to="b") == {"a": 0, "b": 100, "c": 0}
        patches = apiserver.calls("PATCH", ROUTE)
        assert [p.status for p in patches] == [409, 200]
    finally:
        await api.close()
