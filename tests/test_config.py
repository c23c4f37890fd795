"""Bad configs stop the gateway with a message naming the key; good ones reach the parts."""

from __future__ import annotations

from typing import Any

import pytest

from warmgw.config import ClientLimits, ConfigError, parse
from warmgw.core.prefix import PrefixParams, RoutingParams, SessionParams

REPLICAS = [{"name": "r0", "url": "http://127.0.0.1:9001"}]


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"clients": {"write_timout": 5}}, "clients.write_timout: unknown key"),
        ({"clients": {"write_timeout": 0}}, "clients.write_timeout: expected > 0"),
        ({"clients": {"idle_timeout": "soon"}}, "clients.idle_timeout"),
        ({"clients": {"max_head_bytes": -1}}, "clients.max_head_bytes"),
        ({"upstream": {"retries": 1.5}}, "upstream.retries: expected a whole number"),
        ({"health": {"interval": True}}, "health.interval"),
        ({"strategy": "fastest"}, "strategy: expected one of"),
        ({"replicas": [{"name": "r0"}]}, "replicas[0].url"),
        ({"replicas": REPLICAS * 2}, "'r0' is used twice"),
        ({"policy": {"active": "green"}}, "policy.active: pool 'green' has no replica"),
        ({"ramp": {"initial_weight": 2}}, "ramp.initial_weight"),
        ({"listen": {"port": 70000}}, "listen.port"),
        ({"epp": {"listen": {"prot": 9002}}}, "epp.listen.prot: unknown key"),
        ({"epp": {"listen": {"port": 70000}}}, "epp.listen.port: expected 0-65535"),
        ({"epp": {"fallbacks": -1}}, "epp.fallbacks: expected a whole number"),
        ({"epp": {"grpc": True}}, "epp.grpc: unknown key"),
        ({"routing": {"prefixes": {}}}, "routing.prefixes: unknown key"),
        ({"routing": {"prefix": {"chunk_bytes": 8}}}, "routing.prefix: expected chunk_bytes"),
        ({"routing": {"prefix": {"epsilon": 0}}}, "epsilon > 0"),
        ({"routing": {"prefix": {"share_window": -1}}},
         "routing.prefix.share_window: expected a number >= 0, got -1"),
        ({"routing": {"prefix": {"share_window": float("inf")}}},
         "routing.prefix.share_window: expected seconds >= 0 (0: off), got inf"),
        ({"routing": {"session": {"header": 3}}}, "routing.session.header"),
        ({"routing": {"prefix": {"keep_prefixes": True}}},
         "routing.prefix.keep_prefixes: needs routing.prefix.enabled"),
        ({"routing": {"prefix": {"enabled": True, "keep_prefixes": True,
                                 "keep_min_users": 1}}},
         "routing.prefix.keep_min_users: expected >= 2 (one sender's content is never kept)"),
        ({"routing": {"prefix": {"enabled": True, "keep_prefixes": True, "keep_bytes": 10}}},
         "routing.prefix.keep_bytes: expected >= chunk_bytes (256), got 10"),
        ({"routing": {"prefix": {"enabled": True, "keep_prefixes": True,
                                 "warm_seconds": 0}}}, "warm_seconds > 0"),
        ({"routing": {"prefix": {"enabled": True, "keep_prefixes": True,
                                 "warm_cache_share": 1.5}}},
         "routing.prefix.warm_cache_share: expected a share in (0, 1], got 1.5"),
        ({"routing": {"prefix": {"index_headroom": 0}}},
         "routing.prefix.index_headroom: expected a number > 0, got 0"),
        ({"routing": {"prefix": {"slack": -1}}},
         "routing.prefix.slack: expected a number >= 0, got -1"),
        ({"routing": {"prefix": {"epsilon": 0.5, "session_epsilon": 0.25}}},
         "routing.prefix.session_epsilon: expected a number >= epsilon (0.5), got 0.25"),
        ({"routing": {"prefix": {"keep_prefixes": "yes"}}},
         "routing.prefix.keep_prefixes: expected true or false"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, Any], names: str) -> None:
    data = {"replicas": REPLICAS} | data
    with pytest.raises(ConfigError, match=None) as e:
        parse(data)
    assert names in str(e.value)


def test_client_limits_come_from_the_clients_section() -> None:
    cfg = parse({"replicas": REPLICAS, "clients": {"write_timeout": 5, "idle_timeout": 30.5,
                                                   "max_head_bytes": 16384}})
    assert cfg.clients == ClientLimits(write_timeout=5.0, idle_timeout=30.5,
                                       max_head_bytes=16384)
    assert parse({"replicas": REPLICAS}).clients == ClientLimits()


def test_the_epp_section_turns_the_endpoint_picker_on() -> None:
    assert parse({"replicas": REPLICAS}).epp is None
    on = parse({"replicas": REPLICAS, "epp": {}}).epp
    assert on is not None and (on.host, on.port, on.fallbacks) == ("127.0.0.1", 9002, 0)
    p = parse({"replicas": REPLICAS, "epp": {"listen": {"host": "0.0.0.0", "port": 9100},
                                             "fallbacks": 2}}).epp
    assert p is not None and (p.host, p.port, p.fallbacks) == ("0.0.0.0", 9100, 2)


def test_the_routing_section_turns_affinity_on() -> None:
    off = parse({"replicas": REPLICAS}).routing
    assert off == RoutingParams() and not off.active
    on = parse({"replicas": REPLICAS, "routing": {
        "prefix": {"enabled": True, "chunk_bytes": 512, "epsilon": 0.5},
        "session": {"header": "X-Session-Id"}}}).routing
    assert on.prefix == PrefixParams(enabled=True, chunk_bytes=512, epsilon=0.5)
    assert on.session == SessionParams(header="X-Session-Id") and on.active
