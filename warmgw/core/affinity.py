"""Prefix and session affinity on top of the load picker, with a bound on imbalance.

The bound is bounded load (consistent hashing with bounded loads, Mirrokni et al. 2018),
not vllm-router's balance_abs_threshold / balance_rel_threshold: it is relative to the
group's current load, so one parameter (epsilon) holds from 2 requests in flight to 2000
without retuning, it composes with weights (a replica's cap is its weighted share of the
group's in-flight requests), and it gives a guarantee a test can check: a replica takes an
affinity pick only while its in-flight count after the pick is at most
ceil((1 + epsilon) x (in flight in its group + 1) x its weight / the group's weight)
(not rounded up for a ramping replica).
Thresholds on the absolute gap need a value per fleet size and load, and say nothing of a
ramping replica's share.

Per request (its group chosen by pool share first, as the plain picker):
1. session: the replica the session was last sent to, if it is in the group and under
   the bound; else the rest of this list, and the session moves to where it went;
2. prefix: every replica under the bound is scored expected cached chunks (from the
   index) minus load_cost x in flight per unit of weight, against the plain pick (power
   of two choices) scored the same way; the best score wins. A ramping replica is an
   affinity candidate only with probability its weight, and its bound scales with its
   weight, so a ramp still caps what it gets;
3. otherwise the plain pick; if it is over the bound (two draws of loaded replicas), the
   least loaded per unit of weight instead, so the bound holds for every pick.
Whatever is picked is recorded in the index (the replica now holds the prefix).
"""

from __future__ import annotations

import math
import random

from warmgw.core.facts import RequestFacts
from warmgw.core.model import Endpoint, Group, Route
from warmgw.core.picker import choose_group, least_loaded, least_loaded_split
from warmgw.core.prefix import PrefixIndex, RoutingParams, SessionIndex


def under_bound(e: Endpoint, w: float, group_inflight: int, group_weight: float,
                epsilon: float, affine: bool = False) -> bool:
    """e may take one more request without exceeding (1 + epsilon) x its weighted share,
    rounded up to a whole request; for an affinity pick of a ramping replica, not rounded
    up (else at low load it would hold one request all the time, whatever its weight)."""
    cap = (1.0 + epsilon) * (group_inflight + 1) * w / group_weight
    return e.inflight + 1 <= (cap if affine and w < 1.0 else math.ceil(cap))


def _least_per_weight(eps: tuple[Endpoint, ...], now: float) -> Endpoint:
    """The endpoint with the fewest in flight per unit of weight: under the bound (the caps
    sum to more than what is in flight, so some endpoint is below its own)."""
    best = eps[0]
    best_load = 1e18
    for e in eps:
        w = e.weight(now)
        if w > 0.0 and (e.inflight + 1) / w < best_load:
            best, best_load = e, (e.inflight + 1) / w
    return best


def _weight_of(group: Group, now: float) -> float:
    return len(group.full) + sum(e.weight(now) for e in group.ramping)


class Affinity:
    def __init__(self, params: RoutingParams) -> None:
        self.params = params
        self.prefix = PrefixIndex(params.prefix)
        self.sessions = SessionIndex(params.session)
        self.affine = 0  # picks a session or a cached prefix took from the plain pick

    def capacity(self, bytes_per_token: float, cache_tokens: int = 0) -> int:
        """How many chunks the index remembers of a replica: what its cache holds, from its
        /metrics (cache_tokens) or else from config (replica_cache_tokens), turned into
        chunks of prompt bytes; else replica_chunks."""
        p = self.params.prefix
        tokens = cache_tokens or p.replica_cache_tokens
        if tokens > 0:
            return max(1, int(tokens * bytes_per_token / p.chunk_bytes))
        return p.replica_chunks

    def pick(self, route: Route, facts: RequestFacts, rng: random.Random, now: float
             ) -> Endpoint:
        return self.choose(route, facts, rng, now)[0]

    def choose(self, route: Route, facts: RequestFacts, rng: random.Random, now: float
               ) -> tuple[Endpoint, int]:
        """The pick, and how many of the request's leading chunks the index says it holds."""
        group = choose_group(route, rng)
        eps = group.endpoints
        if group.uniform:
            plain = least_loaded(eps, True, rng, now)
        else:
            plain = least_loaded_split(group.full, group.ramping, rng, now)
        if len(eps) == 1:
            return plain, self._depth(plain, facts.chunks, now)
        inflight = sum(e.inflight for e in eps)
        weight = float(len(eps)) if group.uniform else _weight_of(group, now)
        eps_ = self.params.prefix.epsilon
        if not under_bound(plain, plain.weight(now), inflight, weight, eps_):
            plain = _least_per_weight(eps, now)  # the bound holds for every pick
        key = facts.session
        if key is not None:
            name = self.sessions.get(key, now)
            if name is not None:
                for e in eps:
                    if e.name == name:
                        w = e.weight(now)
                        if w > 0.0 and under_bound(e, w, inflight, weight, eps_, True):
                            self.affine += 1
                            return e, self._depth(e, facts.chunks, now)
                        break
        chunks = facts.chunks
        if not chunks:
            return plain, 0
        p = self.params.prefix
        depth = self.prefix.match(chunks, now)
        if not depth:
            return plain, 0
        cost = p.load_cost
        best = plain
        w0 = plain.weight(now)
        best_score = depth.get(plain.name, 0) - cost * plain.inflight / w0 if w0 > 0 else -1e18
        took = False
        for e in eps:
            d = depth.get(e.name, 0)
            if d < p.min_chunks or e is plain:
                continue
            w = e.weight(now)
            if w <= 0.0 or (w < 1.0 and rng.random() >= w):
                continue
            if not under_bound(e, w, inflight, weight, eps_, True):
                continue
            score = d - cost * e.inflight / w
            if score > best_score:
                best, best_score, took = e, score, True
        if took:
            self.affine += 1
        return best, depth.get(best.name, 0)

    def _depth(self, e: Endpoint, chunks: tuple[int, ...], now: float) -> int:
        return self.prefix.match(chunks, now).get(e.name, 0) if chunks else 0

    def record(self, ep: Endpoint, facts: RequestFacts, capacity: int, now: float) -> None:
        if facts.chunks:
            self.prefix.record(ep.name, facts.chunks, now, capacity)
        if facts.session is not None:
            self.sessions.put(facts.session, ep.name, now)
