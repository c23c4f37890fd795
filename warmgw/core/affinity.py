"""Prefix and session affinity on top of the load picker, with a bound on imbalance.

The bound is bounded load (consistent hashing with bounded loads, Mirrokni et al. 2018),
not vllm-router's balance_abs_threshold / balance_rel_threshold: it is relative to the
group's current load, so one parameter (epsilon) holds from 2 requests in flight to 2000
without retuning, it composes with weights (a replica's cap is its weighted share), and it
gives a guarantee a test can check. Thresholds on the absolute gap need a value per fleet
size and load, and say nothing of a ramping replica's share. It is applied twice:
- in flight: a replica takes an affinity pick only while its in-flight count after the
  pick is at most ceil(max((1 + epsilon) x fair, fair + slack x its weight)), fair being
  (in flight in its group + 1) x its weight / the group's weight (with share_window 0,
  not rounded up for a ramping replica). The slack (a few requests) decides at low load
  only, where a relative bound is under one request and a spill costs a whole prefill;
- recent picks (`share_window` > 0): each replica's picks are counted, decayed with time
  constant share_window, and a replica takes a new placement (a prefix's request, or a
  session that has to move) only while its count after the pick is at most
  (1 + epsilon) x its weighted share of the group's (each count plus one, so a fresh
  group is not over at its first picks). A session stays where it is whatever the
  counts (one user alone must not bounce between replicas): how many turns a session
  has does not depend on where it runs, so bounding where sessions start bounds the
  counts, not per pick but over the window. Bounding
  requests in flight alone lets request counts drift: a replica whose cache answers
  faster frees its slots sooner and, with closed-loop clients, serves more requests
  within the same in-flight cap.

Per request (its group chosen by pool share first, as the plain picker):
1. session: the replica the session was last sent to, if it is in the group and under
   the in-flight bound with session_epsilon (looser than epsilon: a session moved loses
   its whole history's cache, a new prefix spilled a shared prefix at most; sessions are
   placed under epsilon, so the looser bound only keeps them where they started); else
   the rest of this list, and the session moves to where it went;
2. prefix: each replica under both bounds scores the chunks the index says it holds
   (below min_chunks: none) minus load_cost x its in flight per unit of weight above the
   group's mean; ties (several holders, or none) go to the highest weighted rendezvous
   hash of the prompt's first chunk (weight = ramp weight), so the first requests of one
   prefix converge on one replica, a spill over the bound goes to the same second
   replica, and a newcomer gets its weighted share of new prefixes;
3. no replica under both: of those under the in-flight bound, the fewest recent picks
   per unit of weight; no chunks (a prompt under one chunk): the plain pick (power
   of two choices), and if it is over the in-flight bound, the least loaded per unit of
   weight instead. So the in-flight bound holds for every pick, the recent-picks bound
   for every placement the prefix score decides.
Whatever is picked is recorded in the index (the replica now holds the prefix).
"""

from __future__ import annotations

import math
import random
import zlib

from warmgw.core.facts import RequestFacts
from warmgw.core.model import Endpoint, Group, Route
from warmgw.core.picker import choose_group, least_loaded, least_loaded_split
from warmgw.core.prefix import PrefixIndex, RoutingParams, SessionIndex

M64 = (1 << 64) - 1
RESCALE = 1e12  # the picks' scale factor at which counts are brought back near 1
MAX_IDS = 4096  # replica identities cached at most
TPC_ALPHA = 0.05  # tokens per chunk: weight of each new sample


def under_bound(e: Endpoint, w: float, group_inflight: int, group_weight: float,
                epsilon: float, affine: bool = False, slack: float = 0.0) -> bool:
    """e may take one more request without exceeding (1 + epsilon) x its weighted share,
    rounded up to a whole request; for an affinity pick of a ramping replica, not rounded
    up (else at low load it would hold one request all the time, whatever its weight)."""
    fair = (group_inflight + 1) * w / group_weight
    cap = max((1.0 + epsilon) * fair, fair + slack * w)
    return e.inflight + 1 <= (cap if affine and w < 1.0 else math.ceil(cap))


def mix(key: int, ident: int) -> int:
    """A 64-bit hash of (key, replica): splitmix64's finaliser."""
    x = (key ^ ident) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def rendezvous(key: int, ident: int, w: float) -> float:
    """Weighted rendezvous (highest random weight) score of a replica for a key: across
    replicas, the highest wins with probability w / (sum of w), and a key's winner moves
    only when the winner leaves or a weight changes. With equal weights it orders replicas
    as mix() does, which the picker then uses alone (no log)."""
    u = ((mix(key, ident) >> 11) + 0.5) * (1.0 / (1 << 53))  # in (0, 1)
    return -w / math.log(u)


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
    return len(group.full) + sum((e.weight(now) for e in group.ramping), 0.0)  # (picker)


class Affinity:
    def __init__(self, params: RoutingParams) -> None:
        self.params = params
        self.prefix = PrefixIndex(params.prefix)
        self.sessions = SessionIndex(params.session)
        self.affine = 0  # picks a session or a cached prefix decided
        # recent picks per replica, in units that grow as exp((now - origin) / window):
        # one pick adds the current unit, so comparing counts needs no decay pass
        self._picks: dict[str, float] = {}
        self._origin: float | None = None
        self._ids: dict[str, int] = {}  # replica -> its rendezvous identity
        self._tpc: dict[str, float] = {}  # model -> prompt tokens per chunk (learn())

    def learn(self, model: str, text_bytes: int, prompt_tokens: int) -> None:
        """A user request whose prompt's text (as the chunks are cut from it) had
        text_bytes, and which the replica counted as prompt_tokens: the tokens a chunk
        holds, averaged (the template's few tokens counted in, so a little high)."""
        cb = self.params.prefix.chunk_bytes
        if text_bytes < 2 * cb or prompt_tokens <= 0:
            return
        r = prompt_tokens * cb / text_bytes
        old = self._tpc.get(model)
        self._tpc[model] = r if old is None else old + TPC_ALPHA * (r - old)

    def tokens_per_chunk(self, model: str, bytes_per_token: float) -> float:
        """Prompt tokens in one chunk: learned from the replicas' counts, else from the
        body's bytes per token (which counts the JSON around the text too)."""
        return self._tpc.get(model) or self.params.prefix.chunk_bytes / bytes_per_token

    def capacity(self, tokens_per_chunk: float, cache_tokens: int = 0) -> int:
        """How many chunks the index remembers of a replica: what its cache holds, from its
        /metrics (cache_tokens) or else from config (replica_cache_tokens), in chunks of
        tokens_per_chunk; else replica_chunks."""
        p = self.params.prefix
        tokens = cache_tokens or p.replica_cache_tokens
        if tokens > 0:
            return max(1, int(tokens * p.index_headroom / tokens_per_chunk))
        return p.replica_chunks

    def pick(self, route: Route, facts: RequestFacts, rng: random.Random, now: float
             ) -> Endpoint:
        return self.choose(route, facts, rng, now)[0]

    def _unit(self, now: float) -> float:
        """What one pick at `now` adds to a replica's recent picks."""
        window = self.params.prefix.share_window
        if window <= 0.0:
            return 0.0
        if self._origin is None:
            self._origin = now
        unit = math.exp((now - self._origin) / window)
        if unit > RESCALE:  # rare (every window x 28): counts back to the scale of one
            # pick, and replicas not picked for that long forgotten
            self._picks = {k: v / unit for k, v in self._picks.items() if v / unit > 1e-9}
            self._ids = {k: v for k, v in self._ids.items() if k in self._picks}
            self._origin, unit = now, 1.0
        return unit

    def _ident(self, name: str) -> int:
        got = self._ids.get(name)
        if got is None:
            if len(self._ids) >= MAX_IDS:  # names of replicas long gone (share_window 0)
                self._ids.clear()
            h = zlib.crc32(name.encode())
            got = self._ids[name] = (h << 32) | zlib.crc32(name.encode(), h)
        return got

    def choose(self, route: Route, facts: RequestFacts, rng: random.Random, now: float
               ) -> tuple[Endpoint, int]:
        """The pick, and how many of the request's leading chunks the index says it holds."""
        group = choose_group(route, rng)
        eps = group.endpoints
        chunks = facts.chunks
        if len(eps) == 1:
            return eps[0], self._depth(eps[0], chunks, now)
        inflight = sum(e.inflight for e in eps)
        weight = float(len(eps)) if group.uniform else _weight_of(group, now)
        p = self.params.prefix
        eps_ = p.epsilon
        # the recent-picks bound: (count + unit) x weight_total <= room x w
        unit = self._unit(now)
        picks = self._picks
        if unit > 0.0:
            total = sum(picks.get(e.spec.name, 0.0) for e in eps) + len(eps) * unit
            room = (1.0 + eps_) * total / weight
        else:
            room = math.inf
        # a ramping replica's in-flight cap is not rounded up when nothing else scales its
        # affinity picks by its weight; with the recent-picks bound, that one does (a cap
        # under one request would shut a ramping replica out at low load)
        exact = unit == 0.0
        key = facts.session
        if key is not None:
            name = self.sessions.get(key, now)
            if name is not None:
                for e in eps:
                    if e.name == name:
                        w = e.weight(now)
                        if w > 0.0 and under_bound(e, w, inflight, weight,
                                                   p.session_epsilon, exact, p.slack):
                            self.affine += 1
                            return e, self._depth(e, chunks, now)
                        break
        if chunks:
            depth = self.prefix.match(chunks, now)
            fair = inflight / weight
            cost = p.load_cost
            least = p.min_chunks
            head = chunks[0]
            uniform = group.uniform
            # all at weight 1: one in-flight cap for all, and no weight to read
            f = (inflight + 1) / weight
            cap = math.ceil(max((1.0 + eps_) * f, f + p.slack))
            ids = self._ids
            best: Endpoint | None = None
            best_score = best_rank = -math.inf
            for e in eps:
                n = e.spec.name
                if uniform:
                    if e.inflight >= cap or picks.get(n, 0.0) + unit > room:
                        continue
                    w = 1.0
                else:
                    w = e.weight(now)
                    if w <= 0.0 or picks.get(n, 0.0) + unit > room * w:
                        continue
                    if not under_bound(e, w, inflight, weight, eps_, exact, p.slack):
                        continue
                d = depth.get(n, 0)
                score = (d if d >= least else 0) - cost * max(0.0, e.inflight / w - fair)
                if score < best_score:
                    continue
                ident = ids.get(n) or self._ident(n)
                r = mix(head, ident) if uniform else rendezvous(head, ident, w)
                if score > best_score or r > best_rank:
                    best, best_score, best_rank = e, score, r
            if best is not None:
                d = depth.get(best.name, 0)
                if d >= least:
                    self.affine += 1
                return best, d
            if unit > 0.0:  # every replica under the in-flight bound is over its share
                e = self._least_picked(eps, inflight, weight, unit, now)
                return e, depth.get(e.name, 0)
        if group.uniform:
            plain = least_loaded(eps, True, rng, now)
        else:
            plain = least_loaded_split(group.full, group.ramping, rng, now)
        if not under_bound(plain, plain.weight(now), inflight, weight, eps_, False, p.slack):
            plain = _least_per_weight(eps, now)  # the bound holds for every pick
        return plain, self._depth(plain, chunks, now)

    def _least_picked(self, eps: tuple[Endpoint, ...], inflight: int, weight: float,
                      unit: float, now: float) -> Endpoint:
        """Of the replicas under the in-flight bound, the one with the fewest recent picks
        per unit of weight (some replica is under that bound)."""
        picks = self._picks
        best = _least_per_weight(eps, now)
        best_load = math.inf
        for e in eps:
            w = e.weight(now)
            p = self.params.prefix
            if w <= 0.0 or not under_bound(e, w, inflight, weight, p.epsilon, False, p.slack):
                continue
            load = (picks.get(e.name, 0.0) + unit) / w
            if load < best_load:
                best, best_load = e, load
        return best

    def _depth(self, e: Endpoint, chunks: tuple[int, ...], now: float) -> int:
        return self.prefix.match(chunks, now).get(e.name, 0) if chunks else 0

    def record(self, ep: Endpoint, facts: RequestFacts, capacity: int, now: float) -> None:
        if facts.chunks:
            self.prefix.record(ep.name, facts.chunks, now, capacity)
        if facts.session is not None:
            self.sessions.put(facts.session, ep.name, now)
        unit = self._unit(now)
        if unit > 0.0:
            self._picks[ep.name] = self._picks.get(ep.name, 0.0) + unit
