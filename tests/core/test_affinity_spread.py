"""Where affinity sends prefixes nobody holds yet, and how it keeps request counts (not only
requests in flight) within the bound: the first requests of a new prefix converge on one
replica, a newcomer gets its weighted share of new prefixes, and a closed loop where one
replica answers faster does not pile requests on it."""

from __future__ import annotations

import heapq
import random
import zlib
from collections import Counter

import pytest

from tests.core.test_affinity import EPS, facts
from tests.core.test_picker import NOW, one_pool, ramping, ready
from warmgw.core.affinity import mix, rendezvous
from warmgw.core.clock import FakeClock
from warmgw.core.policy import TrafficPolicy
from warmgw.core.prefix import PrefixParams, RoutingParams, SessionParams
from warmgw.core.registry import LifecycleParams, Registry
from warmgw.core.routing import Router, Ticket


def router(share_window: float = 10.0, session: bool = False) -> tuple[Router, FakeClock]:
    """Prefix and session affinity with the relative bound alone (no slack): these tests
    are about what keeps counts within (1 + EPS) x share."""
    clock = FakeClock(NOW)
    routing = RoutingParams(PrefixParams(enabled=True, epsilon=EPS, share_window=share_window,
                                         slack=0.0),
                            SessionParams(use_user_field=session))
    r = Router(Registry(LifecycleParams(), clock, TrafficPolicy.single("blue")), clock,
               random.Random(3), routing=routing)
    return r, clock


def test_rendezvous_wins_in_proportion_to_weight() -> None:
    ids = [11, 22, 33, 44]
    weights = [1.0, 1.0, 1.0, 0.5]
    wins: Counter[int] = Counter()
    for key in range(20000):
        scores = [rendezvous(key * 7919, i, w) for i, w in zip(ids, weights, strict=True)]
        wins[scores.index(max(scores))] += 1
    for k, w in enumerate(weights):
        assert abs(wins[k] / 20000 - w / sum(weights)) < 0.015, (k, wins)
    for key in range(2000):  # at equal weights the picker compares mix() alone: same order
        by_mix = max(ids, key=lambda i: mix(key * 7919, i))
        assert by_mix == max(ids, key=lambda i: rendezvous(key * 7919, i, 1.0))


@pytest.mark.parametrize("share_window", [0.0, 10.0], ids=["in flight", "and recent picks"])
def test_a_new_prefix_first_requests_converge_on_one_replica(share_window: float) -> None:
    """Requests of 30 new prefixes arrive interleaved, 6 in flight at a time: each prefix's
    requests go to one replica (none holds any yet when the first ones are picked; the
    load picker alone would scatter them over all four), or two when the first is over a
    bound; and the prefixes spread over the replicas."""
    eps = [ready(n) for n in "abcd"]
    route = one_pool(*eps)
    r, clock = router(share_window)
    rng = random.Random(5)
    where: dict[int, Counter[str]] = {p: Counter() for p in range(30)}
    flying: list[Ticket] = []
    for _ in range(600):
        clock.advance(0.002)
        p = rng.randrange(30)
        t = r.pick(route, facts((*range(p * 100, p * 100 + 6), rng.randrange(10**9))))
        assert t is not None
        where[p][t.ep.name] += 1
        flying.append(t)
        if len(flying) > 6:
            flying.pop(rng.randrange(len(flying))).close()
    on_two = sum(n for c in where.values() for _, n in c.most_common(2))
    assert on_two >= 0.95 * 600, where
    homes = Counter(c.most_common(1)[0][0] for c in where.values())
    assert len(homes) == 4 and max(homes.values()) <= 12, homes


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_a_newcomer_gets_its_weighted_share_of_new_prefixes(weight: float) -> None:
    """Three replicas hold 40 hot prefixes; a fourth joins (weight 1, or 0.5 while
    ramping) and holds none: it gets new prefixes, about its weighted share of them, and
    about its weighted share of all requests (the hot prefixes it takes are those that
    would put their replica over its share)."""
    eps = [ready(n) for n in "abc"]
    r, clock = router()
    for p in range(40):  # the fleet's hot prefixes, served before the newcomer came
        t = r.pick(one_pool(*eps), facts(tuple(range(p * 100, p * 100 + 6))))
        assert t is not None
        t.close()
    new = ready("new") if weight == 1.0 else ramping("new", weight)
    route = one_pool(*eps, new)
    got_new = moved = 0
    for p in range(40, 1040):
        clock.advance(1e-5)  # the ramp's weight stays put
        t = r.pick(route, facts(tuple(range(p * 100, p * 100 + 6))))
        assert t is not None
        got_new += t.ep is new
        t.close()
        old = p % 40  # a hot prefix, interleaved
        t = r.pick(route, facts(tuple(range(old * 100, old * 100 + 6))))
        assert t is not None
        moved += t.ep is new
        t.close()
    share = weight / (3 + weight)
    assert abs(got_new / 1000 - share) < 0.06, got_new
    # the replicas it joined take at most (1 + EPS) x their share of new placements
    least = 1 - 3 * (1 + EPS) / (3 + weight)
    assert least - 0.01 <= (got_new + moved) / 2000 <= (1 + EPS) * share + 0.01


def closed_loop(share_window: float, clients: int = 10, n: int = 6000, scale: float = 1.0
                ) -> Counter[str]:
    """clients each send one request at a time in sessions of 1-6 turns on 12 Zipf-popular
    prefixes; replica a answers in half the time of the others (its cache is hotter, say).
    Requests per replica."""
    eps = [ready(x) for x in "abcd"]
    route = one_pool(*eps)
    r, clock = router(share_window, session=True)
    rng = random.Random(9)
    speed = {"a": 0.5, "b": 1.0, "c": 1.0, "d": 1.0}
    done: list[tuple[float, int, Ticket | None]] = [(NOW, c, None) for c in range(clients)]
    left = [0] * clients
    prefix = [0] * clients
    sid = [""] * clients
    served: Counter[str] = Counter()
    weights = [1 / (k + 1) for k in range(12)]
    for i in range(n):
        t_end, c, ticket = heapq.heappop(done)
        clock.advance(max(0.0, t_end - clock.now()))
        if ticket is not None:
            ticket.close()
        if left[c] == 0:  # a new session
            left[c] = rng.randint(1, 6)
            prefix[c] = rng.choices(range(12), weights)[0]
            sid[c] = f"s{i}"
        left[c] -= 1
        head = tuple(range(prefix[c] * 100, prefix[c] * 100 + 4))
        t = r.pick(route, facts((*head, zlib.crc32(sid[c].encode()), 6 - left[c]), sid[c]))
        assert t is not None
        served[t.ep.name] += 1
        end = clock.now() + scale * speed[t.ep.name] * rng.uniform(0.01, 0.02)
        heapq.heappush(done, (end, c, t))
    return served


def max_mean(c: Counter[str]) -> float:
    return max(c.values()) / (sum(c.values()) / len(c))


def test_request_counts_stay_within_the_bound_in_a_closed_loop() -> None:
    assert max_mean(closed_loop(10.0)) <= 1 + EPS + 0.02
    # over 13 minutes (the decayed counts are rescaled every 4.6 minutes on the way)
    assert max_mean(closed_loop(10.0, scale=100.0)) <= 1 + EPS + 0.02
    # in flight alone, the fast replica takes more: its slots free up twice as fast
    assert max_mean(closed_loop(0.0)) > 1 + EPS + 0.05

