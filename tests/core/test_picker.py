"""The picker, statistically, with a seeded random.Random and a fixed 'now'."""

from __future__ import annotations

import itertools
import random
from collections import Counter, deque
from collections.abc import Sequence

import pytest

from warmgw.core.model import Endpoint, EndpointSpec, Group, Route
from warmgw.core.picker import pick
from warmgw.core.ramp import LatencyRamp, RampParams, SlowStart, SlowStartParams

NOW = 1000.0
N = 5000


def ready(name: str, inflight: int = 0) -> Endpoint:
    ep = Endpoint(EndpointSpec(name, f"http://{name}:8000"), NOW)
    ep.inflight = inflight
    return ep


def ramping(name: str, weight: float, inflight: int = 0) -> Endpoint:
    """An endpoint whose ramp weighs `weight` at NOW (a latency ramp that has just begun)."""
    ep = ready(name, inflight)
    ep.ramp = LatencyRamp(RampParams(initial_weight=weight), NOW)
    return ep


def route(*groups: tuple[str, float, Sequence[Endpoint]]) -> Route:
    gs = tuple(Group(pool, share, tuple(eps)) for pool, share, eps in groups)
    return Route(gs, sum(g.share for g in gs))


def one_pool(*eps: Endpoint) -> Route:
    return route(("blue", 1.0, eps))


def shares(r: Route, n: int = N, seed: int = 7, now: float = NOW) -> dict[str, float]:
    """Fraction of n picks per endpoint name; in-flight counts stay as they are."""
    rng = random.Random(seed)
    c: Counter[str] = Counter()
    for _ in range(n):
        ep = pick(r, rng, now)
        assert ep is not None
        c[ep.name] += 1
    return {name: k / n for name, k in c.items()}


def share_under_load(r: Route, target: Endpoint, concurrency: int, seed: int) -> float:
    """Closed loop: each pick adds a request in flight; the oldest finishes once more than
    `concurrency` are in flight (every replica equally fast). Fraction of picks on target."""
    rng = random.Random(seed)
    flying: deque[Endpoint] = deque()
    hits = 0
    for _ in range(N):
        ep = pick(r, rng, NOW)
        assert ep is not None
        ep.inflight += 1
        flying.append(ep)
        hits += ep is target
        while len(flying) > concurrency:
            flying.popleft().inflight -= 1
    return hits / N


# -- balance -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "eps",
    [
        pytest.param([ready("a"), ready("b")], id="ready (uniform P2C)"),
        pytest.param([ramping("a", 1.0), ramping("b", 1.0)], id="weighted, equal"),
        pytest.param([ramping("a", 0.3), ramping("b", 0.3)], id="weighted, both low"),
        pytest.param([ready("a", 3), ready("b", 3)], id="equal load"),
    ],
)
def test_equal_load_and_weight_split_evenly(eps: list[Endpoint]) -> None:
    got = shares(one_pool(*eps))
    assert 0.46 <= got["a"] <= 0.54
    assert 0.46 <= got["b"] <= 0.54


def test_three_equal_endpoints_share_evenly() -> None:
    got = shares(one_pool(ready("a"), ready("b"), ready("c")))
    assert all(0.30 <= got[n] <= 0.37 for n in "abc"), got


@pytest.mark.parametrize(
    ("eps", "expect"),
    [
        # (endpoint, lower bound, upper bound) of its share of the picks
        ([ready("a", 0), ready("b", 4)], {"a": (1.0, 1.0), "b": (0.0, 0.0)}),
        ([ready("a", 0), ready("b", 0), ready("c", 5)],
         {"a": (0.45, 0.55), "b": (0.45, 0.55), "c": (0.0, 0.0)}),
        # pairs (a,b)->b, (a,c)->c, (b,c)->c: a never, b a third, c two thirds
        ([ready("a", 2), ready("b", 1), ready("c", 0)],
         {"a": (0.0, 0.0), "b": (0.29, 0.38), "c": (0.62, 0.71)}),
        # weighted path: equal weights, the busier one loses
        ([ramping("a", 0.5, 0), ramping("b", 0.5, 4)], {"a": (0.7, 0.8), "b": (0.2, 0.3)}),
    ],
)
def test_a_loaded_endpoint_is_picked_less(
    eps: list[Endpoint], expect: dict[str, tuple[float, float]]
) -> None:
    got = shares(one_pool(*eps))
    for name, (lo, hi) in expect.items():
        assert lo <= got.get(name, 0.0) <= hi, (name, got)


def test_balances_inflight_in_a_closed_loop() -> None:
    eps = [ready(n) for n in "abcd"]
    r = one_pool(*eps)
    rng = random.Random(3)
    worst = 0
    for i in range(N):
        ep = pick(r, rng, NOW)
        assert ep is not None
        ep.inflight += 1
        if i % 2:  # requests finish at random, half as often as they come
            done = rng.choice([e for e in eps if e.inflight])
            done.inflight -= 1
        worst = max(worst, max(e.inflight for e in eps) - min(e.inflight for e in eps))
    # 2500 requests in flight across 4 replicas, never far apart
    assert worst <= 10


# -- ramping weights ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("n_ready", "concurrency", "seed"),
    [
        pytest.param(1, 0, 1, id="1 ready, idle"),
        pytest.param(1, 4, 2, id="1 ready, 4 in flight"),
        pytest.param(4, 16, 3, id="4 ready, 16 in flight"),
        pytest.param(1, 64, 4, id="1 ready, 64 in flight"),
    ],
)
def test_ramping_endpoint_at_weight_0_1_gets_roughly_its_share(
    n_ready: int, concurrency: int, seed: int
) -> None:
    # The ready ones are ramps at full weight so the group takes the weighted path.
    eps = [ramping(f"r{i}", 1.0) for i in range(n_ready)]
    new = ramping("new", 0.1)
    share = share_under_load(one_pool(*eps, new), new, concurrency, seed)
    fair = 0.1 / (n_ready + 0.1)  # 9 % next to one ready replica, 2.4 % next to four
    assert fair / 3 <= share <= fair * 2.2, f"{share:.2%} vs its share {fair:.2%}"


def test_ramping_endpoint_gets_less_than_ready_ones_and_is_never_starved() -> None:
    eps = [ready("a"), ready("b"), ramping("new", 0.2)]
    got = shares(one_pool(*eps), n=20000)
    assert 0.0 < got["new"] < got["a"] / 2


def test_weight_is_read_at_pick_time() -> None:
    """The same snapshot gives a slow-starting endpoint more traffic as time passes."""
    new = ready("new")
    new.ramp = SlowStart(SlowStartParams(window=30.0, min_weight_percent=0.1), NOW)
    old = ramping("old", 1.0)
    r = one_pool(old, new)
    early = shares(r, now=NOW).get("new", 0.0)
    late = shares(r, now=NOW + 30.0)["new"]
    assert 0.45 <= late <= 0.55
    assert early < late / 3


# -- exclusion ---------------------------------------------------------------------------------


def test_excluded_endpoints_are_never_picked() -> None:
    a, b, c = ready("a"), ready("b"), ready("c")
    r = one_pool(a, b, c)
    rng = random.Random(5)
    picked = {pick(r, rng, NOW, exclude={a}) for _ in range(500)}
    assert picked == {b, c}


def test_exclusion_falls_back_to_another_pool_then_to_none() -> None:
    a, b, g = ready("a"), ready("b"), ready("g")
    r = route(("blue", 1.0, [a, b]), ("green", 1e-9, [g]))  # green almost never chosen
    rng = random.Random(5)
    assert {pick(r, rng, NOW, exclude=[a, b]) for _ in range(50)} == {g}
    assert pick(r, rng, NOW, exclude=[a, b, g]) is None


def test_exclusion_still_prefers_the_less_loaded() -> None:
    a, b, c = ready("a"), ready("b", 0), ready("c", 6)
    rng = random.Random(5)
    got = Counter(pick(one_pool(a, b, c), rng, NOW, exclude=[a]) for _ in range(1000))
    # two draws with replacement: b unless c was drawn twice (1/4)
    assert 700 <= got[b] <= 800
    assert got[b] + got[c] == 1000


# -- round robin (the naive baseline) ----------------------------------------------------------


def test_round_robin_cycles_ignoring_load_and_weight() -> None:
    eps = [ready("a"), ready("b", inflight=100), ramping("c", 0.05)]
    r = one_pool(*eps)
    rng = random.Random(1)
    cursor = itertools.count()
    seq = [pick(r, rng, NOW, cursor=cursor) for _ in range(30)]
    assert Counter(e.name for e in seq if e) == {"a": 10, "b": 10, "c": 10}
    assert seq[:3] * 10 == seq  # a fixed cycle
    assert len(set(seq[:3])) == 3


# -- pools -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pools", "expect"),
    [
        ({"blue": 1.0}, {"blue": 1.0}),
        ({"blue": 0.3}, {"blue": 1.0}),  # shares are relative
        ({"blue": 0.9, "green": 0.1}, {"blue": 0.9, "green": 0.1}),
        ({"blue": 1.0, "green": 1.0, "red": 2.0}, {"blue": 0.25, "green": 0.25, "red": 0.5}),
        ({"blue": 9.0, "green": 1.0}, {"blue": 0.9, "green": 0.1}),
    ],
)
def test_pools_get_traffic_by_share(pools: dict[str, float], expect: dict[str, float]) -> None:
    r = route(*((p, s, [ready(f"{p}-0"), ready(f"{p}-1")]) for p, s in pools.items()))
    got: dict[str, float] = dict.fromkeys(pools, 0.0)
    for name, frac in shares(r).items():
        got[name.split("-")[0]] += frac
    for pool, want in expect.items():
        assert got[pool] == pytest.approx(want, abs=0.03), (pool, got)
