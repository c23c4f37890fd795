"""The gateway's state as plain JSON-able data, for the admin API, the CLI and the page.

The whole-gateway status is O(replicas) and is built off the loop: `capture` copies the
state into plain tuples on the event loop (one short pass, so the copy is consistent), and
`build` (dicts, rounding, sorting) and the JSON encoding run in a worker thread (the admin
API's handler, warmgw.admin). Same reasoning as warmgw.metrics: no per-change upkeep, never
stale, and the loop's step stays a copy of the fields, not the formatting of 1,000 replicas.
"""

from __future__ import annotations

import json
import math
from typing import Any

from warmgw.core.bluegreen import BlueGreen, pool_counts
from warmgw.core.lifecycle import ROUTABLE, State
from warmgw.core.model import Endpoint, EndpointSpec
from warmgw.core.policy import TrafficPolicy
from warmgw.core.profile import Learned
from warmgw.core.registry import Registry
from warmgw.core.routing import Router
from warmgw.core.shapes import ShapeKey

# spec, url, models, state, since_s, reason, weight (0 when not routable), inflight, requests,
# errors, ratio, warm_rounds: immutable values, read off the loop
ReplicaRow = tuple[EndpointSpec, str, frozenset[str], State, float, str, float, int, int, int,
                   float | None, int]


def replica_row(ep: Endpoint, now: float) -> ReplicaRow:
    state = ep.state
    return (ep.spec, ep.url, ep.models, state, now - ep.since, ep.reason,
            ep.weight(now) if state in ROUTABLE else 0.0, ep.inflight, ep.requests, ep.errors,
            ep.ratio, ep.warm_rounds)


def replica_dict(row: ReplicaRow, share: float) -> dict[str, Any]:
    (spec, url, models, state, since, reason, weight, inflight, requests, errors,
     ratio, warm_rounds) = row
    return {
        "name": spec.name,
        "url": url,
        "pool": spec.pool,
        "models": sorted(models),
        "state": str(state),
        "since_s": round(since, 3),
        "reason": reason,
        "weight": round(weight, 4) if share > 0.0 else 0.0,
        "inflight": inflight,
        "requests": requests,
        "errors": errors,
        "latency_ratio": None if ratio is None else round(ratio, 3),
        "warm_rounds": warm_rounds,
    }


def replica(ep: Endpoint, now: float, share: float) -> dict[str, Any]:
    return replica_dict(replica_row(ep, now), share)


def gateway(registry: Registry, bluegreen: BlueGreen, strategy: str) -> dict[str, Any]:
    return build(capture(registry, bluegreen, strategy))


def capture(registry: Registry, bluegreen: BlueGreen, strategy: str) -> dict[str, Any]:
    """The status with the replicas as tuples of immutable values (on the loop: one pass,
    no formatting; see `build`)."""
    now = registry.clock.now()
    running = bluegreen.in_progress
    return {
        "strategy": strategy,
        "policy": {
            "active": bluegreen.active,
            "previous": bluegreen.previous,
            "shares": registry.policy,  # frozen: made a dict by build
            "cutover_in_progress": running.as_dict() if running else None,
        },
        "replicas": [replica_row(ep, now) for ep in registry.endpoints.values()],
        "cutovers": [r.as_dict() for r in reversed(bluegreen.history)][:20],
        "transitions": [
            {"replica": t.name, "from": str(t.frm), "to": str(t.to), "reason": t.reason,
             "ago_s": round(now - t.at, 3)}
            for t in list(registry.history)[-50:]
        ],
    }


def build(captured: dict[str, Any]) -> dict[str, Any]:
    """The status as JSON-able data (in a worker thread: O(replicas) of formatting)."""
    policy: TrafficPolicy = captured["policy"]["shares"]
    rows: list[ReplicaRow] = captured["replicas"]
    rows.sort(key=lambda r: (r[0].pool, r[0].name))
    pools = {
        name: {"share": policy.share(name), "replicas": c.total, "warm": c.warm,
               "ready": c.ready, "inflight": c.inflight}
        for name, c in sorted(pool_counts((r[0].pool, r[3], r[7]) for r in rows).items())
    }
    for name, share in policy.shares:
        pools.setdefault(name, {"share": share, "replicas": 0, "warm": 0, "ready": 0,
                                "inflight": 0})
    return {
        **captured,
        "policy": {**captured["policy"], "shares": policy.as_dict()},
        "pools": pools,
        "replicas": [replica_dict(r, policy.share(r[0].pool)) for r in rows],
    }


def _bucket_range(bucket: int) -> list[int]:
    """The prompt sizes in tokens of a fine bucket (core.shapes.fine), both ends included."""
    if bucket < 0:
        return [0, 0]
    lo = math.ceil(2 ** (bucket / 4))
    return [lo, max(lo, math.ceil(2 ** ((bucket + 1) / 4)) - 1)]


def shape(key: ShapeKey, learned: Learned, share: float, now: float) -> dict[str, Any]:
    return {
        "shape": key.describe(),
        "model": key.model,
        "kind": key.kind,
        "stream": key.stream,
        "prompt_tokens": {"lo": learned.lo or None, "hi": learned.hi or None},
        "bucket_tokens": _bucket_range(key.bucket),
        "features": {**key.features._asdict(), "text": key.features.describe()},
        "share": round(share, 6),
        "pinned": learned.pinned_until > now,
    }


def _prefixes(router: Router) -> dict[str, Any]:
    """The hot shared prefixes kept to warm replicas with (no text: counts only)."""
    k = router.keeper
    if k is None:
        return {"enabled": False}
    p = k.p
    return {"enabled": True, "kept": len(k), "bytes": k.bytes, "budget_bytes": p.keep_bytes,
            "evicted": k.evicted, "min_users": p.keep_min_users}


def profile(router: Router, specs: bool = False) -> dict[str, Any]:
    """The learned traffic profile, the warmup's coverage of user traffic and the cold hits,
    for the admin API (GET /admin/v1/profile), the CLI and the page."""
    now = router.clock.now()
    prof = router.profile
    p = prof.p
    ratio = router.coverage.ratio(now)
    hits: dict[str, dict[str, int]] = {}
    for (replica, reason), n in sorted(router.cold_hits.items()):
        hits.setdefault(replica, {})[reason] = n
    kept: dict[str, Any] = {"kept": len(prof.specs), "bytes": prof.spec_bytes,
                            "dropped": prof.specs_dropped, "enabled": p.keep_specs,
                            "budget_bytes": p.spec_budget}
    if specs:
        kept["content"] = {sid: json.loads(canon) for sid, canon in sorted(prof.specs.items())}
    return {
        "coverage": {"ratio": None if ratio is None else round(ratio, 6),
                     "window_s": router.coverage.window},
        "profile": {"shapes": len(prof.shapes), "max_shapes": p.max_shapes,
                    "top_share": p.coverage, "half_life_s": p.half_life},
        "shapes": [shape(k, s, share, now) for k, s, share in prof.top(now)],
        "specs": kept,
        "prefixes": _prefixes(router),
        "cold_hits": hits,
        "replicas": [
            {"name": ep.name, "pool": ep.pool, "state": str(ep.state),
             "warmed_shapes": sum(ep.seen.values()),
             "first_seen_from_users": sum(not w for w in ep.seen.values()),
             "cold_hits": sum(hits.get(ep.name, {}).values())}
            for ep in sorted(router.registry.endpoints.values(), key=lambda e: (e.pool, e.name))
        ],
    }
