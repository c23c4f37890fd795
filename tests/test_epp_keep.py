"""keep_prefixes behind Envoy: the endpoint picker feeds the prefix keeper as the proxy
does, each request's sender being its session, its `user` field or the client address
Envoy put first in X-Forwarded-For. No Envoy needed: the exchange is fed the events the
gRPC stream would carry."""

from __future__ import annotations

import json
import random

from warmgw.core.clock import FakeClock
from warmgw.core.model import EndpointSpec
from warmgw.core.policy import TrafficPolicy
from warmgw.core.prefix import PrefixParams, RoutingParams
from warmgw.core.registry import LifecycleParams, Registry
from warmgw.core.routing import Router
from warmgw.epp.exchange import Exchange
from warmgw.epp.wire import Event, Kind

SYSTEM = "You answer questions about the fleet's runbooks, briefly and exactly. " * 12


def router() -> Router:
    clock = FakeClock(1000.0)
    reg = Registry(LifecycleParams(), clock, TrafficPolicy.single("blue"))
    reg.add(EndpointSpec("r0", "http://127.0.0.1:9000", "blue", "m"))
    reg.probe_ok("r0", frozenset({"m"}), 4096, None)
    reg.warm_done("r0", 1, {}, "warm")  # ramping: routable
    routing = RoutingParams(PrefixParams(enabled=True, chunk_bytes=64, keep_prefixes=True,
                                         keep_min_users=3, keep_bytes=8192))
    return Router(reg, clock, random.Random(1), routing=routing)


def send(r: Router, question: str, forwarded: str) -> None:
    body = json.dumps({"model": "m", "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}).encode()
    x = Exchange(r, lambda url: url.split("//", 1)[1], 1 << 20)
    headers = {":method": "POST", ":path": "/v1/chat/completions",
               "content-type": "application/json", "x-forwarded-for": forwarded}
    x.on(Event(Kind.REQUEST_HEADERS, headers, b"", False, 2, 2))
    replies = x.on(Event(Kind.REQUEST_BODY, {}, body, True))
    assert replies and x.ticket is not None and x.ticket.ep.name == "r0"
    x.close()


def test_a_prefix_three_clients_share_is_kept_through_the_picker() -> None:
    r = router()
    for i, addr in enumerate(["10.0.0.1", "10.0.0.2, 10.9.9.9", "10.0.0.3"]):
        send(r, f"question number {i} about something private", addr)
    assert r.keeper is not None and len(r.keeper) == 1
    kept = next(iter(r.keeper.kept.values()))
    assert [m["role"] for m in kept.body["messages"]] == ["system"]
    assert "private" not in json.dumps(kept.body)


def test_one_client_alone_never_has_its_prompt_kept() -> None:
    r = router()
    for i in range(10):  # one address; X-Forwarded-For's later entries are proxies, not senders
        send(r, f"question {i}", f"10.0.0.1, 10.9.9.{i}")
    assert r.keeper is not None and len(r.keeper) == 0
