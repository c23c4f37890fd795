"""Pick an endpoint for one request from the current snapshot.

Weighted least-outstanding-requests with the power of two choices: draw two candidates
(with probability proportional to weight), keep the one with fewer in-flight requests per
unit of weight. Weights are read at pick time, so a ramping endpoint's weight is never
stale. The naive baseline (`round_robin`) ignores weights and load.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Collection, Iterator, Sequence
from itertools import accumulate

from warmgw.core.model import Endpoint, Group, Route


def choose_group(route: Route, rng: random.Random) -> Group:
    groups = route.groups
    if len(groups) == 1:
        return groups[0]
    x = rng.random() * route.total_share
    for g in groups:
        x -= g.share
        if x < 0.0:
            return g
    return groups[-1]


def least_loaded(
    endpoints: Sequence[Endpoint], uniform: bool, rng: random.Random, now: float
) -> Endpoint:
    n = len(endpoints)
    if n == 1:
        return endpoints[0]
    if uniform:
        r = rng.random  # two draws: random() is C, randrange() Python (hot path)
        i = int(r() * n)
        j = int(r() * (n - 1))
        if j >= i:
            j += 1
        a, b = endpoints[i], endpoints[j]
        return b if b.inflight < a.inflight else a
    weights = [e.weight(now) for e in endpoints]
    cum = list(accumulate(weights))
    total = cum[-1]
    a = endpoints[min(bisect_right(cum, rng.random() * total), n - 1)]
    b = endpoints[min(bisect_right(cum, rng.random() * total), n - 1)]
    if a is b:
        return a
    # Both were drawn by weight already; compare in-flight per unit of weight. When both
    # are idle the first draw stands, so an endpoint's share follows its weight.
    wa, wb = a.weight(now), b.weight(now)
    return b if b.inflight * wa < a.inflight * wb else a


def _draw(
    full: Sequence[Endpoint], ramping: Sequence[Endpoint], weights: Sequence[float],
    total: float, rng: random.Random,
) -> Endpoint:
    """One endpoint with probability proportional to weight (full ones weigh 1)."""
    x = rng.random() * total
    nf = len(full)
    if x < nf:
        return full[int(x)]
    x -= nf
    for e, w in zip(ramping, weights, strict=True):
        x -= w
        if x < 0.0:
            return e
    return ramping[-1] if ramping else full[-1]


def least_loaded_split(
    full: Sequence[Endpoint], ramping: Sequence[Endpoint], rng: random.Random, now: float
) -> Endpoint:
    """least_loaded's weighted draw in O(number of ramping endpoints), not O(all): the
    endpoints at full weight are drawn by index."""
    weights = [e.weight(now) for e in ramping]
    total = len(full) + sum(weights, 0.0)  # 0.0: mypyc reads int + sum(floats) as an int
    a = _draw(full, ramping, weights, total, rng)
    b = _draw(full, ramping, weights, total, rng)
    if a is b:
        return a
    wa, wb = a.weight(now), b.weight(now)
    return b if b.inflight * wa < a.inflight * wb else a


def round_robin(group: Group, turn: int) -> Endpoint:
    eps = group.endpoints
    return eps[turn % len(eps)]


def pick(
    route: Route,
    rng: random.Random,
    now: float,
    exclude: Collection[Endpoint] = (),
    cursor: Iterator[int] | None = None,
) -> Endpoint | None:
    """One endpoint for a request, or None when every candidate is excluded. With a
    cursor (the naive baseline), round robin: the cursor's next turn."""
    group = choose_group(route, rng)
    eps: Sequence[Endpoint] = group.endpoints
    if exclude:
        eps = [e for e in eps if e not in exclude]
        if not eps:
            others = [e for g in route.groups for e in g.endpoints if e not in exclude]
            if not others:
                return None
            eps = others
        return least_loaded(eps, False, rng, now)
    if cursor is not None:
        return round_robin(group, next(cursor))
    if group.uniform:
        return least_loaded(eps, True, rng, now)
    return least_loaded_split(group.full, group.ramping, rng, now)
