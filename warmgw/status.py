"""The gateway's state as plain JSON-able data, for the admin API, the CLI and the page."""

from __future__ import annotations

from typing import Any

from warmgw.core.bluegreen import BlueGreen
from warmgw.core.lifecycle import ROUTABLE
from warmgw.core.model import Endpoint
from warmgw.core.registry import Registry


def replica(ep: Endpoint, now: float, share: float) -> dict[str, Any]:
    routable = ep.state in ROUTABLE and share > 0.0
    return {
        "name": ep.name,
        "url": ep.url,
        "pool": ep.pool,
        "models": sorted(ep.models),
        "state": str(ep.state),
        "since_s": round(now - ep.since, 3),
        "reason": ep.reason,
        "weight": round(ep.weight(now), 4) if routable else 0.0,
        "inflight": ep.inflight,
        "requests": ep.requests,
        "errors": ep.errors,
        "latency_ratio": None if ep.ratio is None else round(ep.ratio, 3),
        "warm_rounds": ep.warm_rounds,
    }


def gateway(registry: Registry, bluegreen: BlueGreen, strategy: str) -> dict[str, Any]:
    now = registry.clock.now()
    policy = registry.policy
    pools = {
        name: {
            "share": policy.share(name),
            "replicas": c.total,
            "warm": c.warm,
            "ready": c.ready,
            "inflight": c.inflight,
        }
        for name, c in sorted(bluegreen.pools().items())
    }
    for name, share in policy.shares:
        pools.setdefault(name, {"share": share, "replicas": 0, "warm": 0, "ready": 0,
                                "inflight": 0})
    running = bluegreen.in_progress
    return {
        "strategy": strategy,
        "policy": {
            "active": bluegreen.active,
            "previous": bluegreen.previous,
            "shares": policy.as_dict(),
            "cutover_in_progress": running.as_dict() if running else None,
        },
        "pools": pools,
        "replicas": [
            replica(ep, now, policy.share(ep.pool))
            for ep in sorted(registry.endpoints.values(), key=lambda e: (e.pool, e.name))
        ],
        "cutovers": [r.as_dict() for r in reversed(bluegreen.history)][:20],
        "transitions": [
            {"replica": t.name, "from": str(t.frm), "to": str(t.to), "reason": t.reason,
             "ago_s": round(now - t.at, 3)}
            for t in list(registry.history)[-50:]
        ],
    }
