"""Behind Envoy, the endpoint that served a request is the one Envoy reports back
(x-gateway-destination-endpoint-served in the response's envoy.lb metadata): when Envoy
fell back down the EPP's list, the picked replica is charged a failure it could not take
and the outcome (status, latency, in-flight count) goes to the one that served. Fed the
events the gRPC stream would carry; no Envoy needed."""

from __future__ import annotations

import json
import random

from warmgw.core.clock import FakeClock
from warmgw.core.model import EndpointSpec
from warmgw.core.policy import TrafficPolicy
from warmgw.core.registry import LifecycleParams, Registry
from warmgw.core.routing import Router
from warmgw.epp.exchange import Exchange
from warmgw.epp.wire import Event, Kind

BODY = json.dumps({"model": "m", "prompt": "hello there", "max_tokens": 4}).encode()


def fleet() -> Router:
    clock = FakeClock(1000.0)
    reg = Registry(LifecycleParams(), clock, TrafficPolicy.single("blue"))
    for i in range(2):
        name = f"r{i}"
        reg.add(EndpointSpec(name, f"http://127.0.0.{i + 1}:8000", "blue", "m"))
        reg.probe_ok(name, frozenset({"m"}), 4096, None)
        reg.warm_done(name, 1, {}, "warm")
    return Router(reg, clock, random.Random(1))


def addr(url: str) -> str:
    return url.split("//", 1)[1]


def request(r: Router) -> Exchange:
    x = Exchange(r, addr, 1 << 20, fallbacks=1)
    x.on(Event(Kind.REQUEST_HEADERS, {":method": "POST", ":path": "/v1/completions",
                                      "content-type": "application/json"}, b"", False, 2, 2))
    x.on(Event(Kind.REQUEST_BODY, {}, BODY, True))
    assert x.ticket is not None
    return x


def respond(x: Exchange, served: str) -> None:
    x.on(Event(Kind.RESPONSE_HEADERS, {":status": "200", "content-length": "20"}, b"", False,
               served=served))
    x.on(Event(Kind.RESPONSE_BODY, {}, b'{"usage":{"prompt_tokens":2}}', True))
    x.close()


def test_a_fallback_that_served_gets_the_outcome_and_the_pick_a_failure() -> None:
    r = fleet()
    x = request(r)
    picked = x.ticket.ep if x.ticket else None
    assert picked is not None
    other = next(e for e in r.registry.endpoints.values() if e is not picked)
    respond(x, addr(other.url))
    assert picked.errors == 1 and picked.inflight == 0 and not picked.tickets
    assert other.errors == 0 and other.inflight == 0 and not other.tickets
    counted = {k[1]: n for k, n in r.stats.requests.items() if k[3] == 200}
    assert counted == {other.name: 1}


def test_the_picked_endpoint_that_served_is_charged_nothing() -> None:
    r = fleet()
    x = request(r)
    picked = x.ticket.ep if x.ticket else None
    assert picked is not None
    respond(x, addr(picked.url))
    assert picked.errors == 0 and picked.inflight == 0
    counted = {k[1]: n for k, n in r.stats.requests.items() if k[3] == 200}
    assert counted == {picked.name: 1}
