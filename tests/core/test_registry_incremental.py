"""The registry keeps its routable set as replicas move and rebuilds only the routes that
changed: after any sequence of lifecycle calls, discovery deltas and policy changes, the
snapshot must be what a scan of every replica gives."""

from __future__ import annotations

import random

import pytest

from warmgw.core.clock import FakeClock
from warmgw.core.lifecycle import ROUTABLE, State
from warmgw.core.model import EndpointSpec, Snapshot
from warmgw.core.policy import TrafficPolicy
from warmgw.core.registry import LifecycleParams, Registry

POOLS = ("blue", "green")
MODELS = ("a", "b", "")  # "": the models come from the probe


def scanned(reg: Registry) -> tuple[dict[str, dict[str, tuple[set[str], set[str]]]], set[str]]:
    """(model -> pool -> (full names, ramping names), known models) from every replica."""
    routes: dict[str, dict[str, tuple[set[str], set[str]]]] = {}
    known: set[str] = set()
    for ep in reg.endpoints.values():
        if ep.state is State.GONE:
            continue
        known |= ep.models
        if ep.state not in ROUTABLE or reg.policy.share(ep.pool) <= 0.0:
            continue
        for m in ep.models:
            full, ramping = routes.setdefault(m, {}).setdefault(ep.pool, (set(), set()))
            (full if ep.ramp is None else ramping).add(ep.name)
    return routes, known


def seen(snap: Snapshot) -> tuple[dict[str, dict[str, tuple[set[str], set[str]]]], set[str]]:
    routes = {
        m: {g.pool: ({e.name for e in g.full}, {e.name for e in g.ramping}) for g in r.groups}
        for m, r in snap.routes.items()
    }
    for r in snap.routes.values():
        for g in r.groups:
            assert list(g.endpoints) == [*g.full, *g.ramping] and g.uniform == (not g.ramping)
        assert r.total_share == pytest.approx(sum(g.share for g in r.groups))
    return routes, set(snap.known_models)


@pytest.mark.parametrize("seed", range(8))
def test_the_kept_snapshot_matches_a_full_scan(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    reg = Registry(LifecycleParams(), clock, TrafficPolicy.single("blue"))
    for step in range(600):
        names = list(reg.endpoints)
        op = rng.randrange(11)
        name = rng.choice(names) if names else "r0"
        ep = reg.endpoints.get(name)
        if op <= 1 or ep is None:
            i = rng.randrange(30)
            reg.add(EndpointSpec(f"r{i}", f"http://127.0.0.{i + 1 + 50 * rng.randrange(2)}:8000",
                                 rng.choice(POOLS), rng.choice(MODELS)))
        elif op == 2:
            reg.remove(name)
        elif op == 3:
            reg.probe_ok(name, frozenset(rng.sample(["a", "b", "c"], rng.randrange(1, 3))),
                         4096, 1.0)
        elif op == 4:
            reg.warm_done(name, 1, {}, "warm")
        elif op == 5 and ep.state is not State.GONE:
            reg.eject(ep, "test", cold=rng.random() < 0.5)
        elif op == 6:
            reg.drain(name)
        elif op == 7 and not ep.removed:
            reg.undrain(name)
        elif op == 8 and ep.state in (State.RAMPING, State.READY, State.WARMING):
            reg.rewarm(name)
        elif op == 9:
            share = rng.choice([0.0, 0.3, 1.0])
            reg.set_policy(TrafficPolicy.of({"blue": 1.0 - share, "green": share}))
        else:
            clock.advance(rng.choice([0.1, 1.0, 30.0]))
            reg.tick()
        if rng.random() < 0.7:  # not read after every change: several changes coalesce
            assert seen(reg.snapshot) == scanned(reg), step


def test_a_snapshot_once_taken_does_not_change() -> None:
    reg = Registry(LifecycleParams(strategy=LifecycleParams().strategy), FakeClock(),
                   TrafficPolicy.single("blue"))
    for i in range(3):
        reg.add(EndpointSpec(f"r{i}", f"http://127.0.0.{i + 1}:8000", "blue", "a"))
        reg.probe_ok(f"r{i}", frozenset({"a"}), 4096, 1.0)
        reg.warm_done(f"r{i}", 1, {}, "warm")
    before = reg.snapshot
    names = [e.name for e in before.routes["a"].groups[0].endpoints]
    reg.remove("r1")
    after = reg.snapshot
    assert [e.name for e in before.routes["a"].groups[0].endpoints] == names
    assert "r1" not in [e.name for e in after.routes["a"].groups[0].endpoints]
    assert after.version > before.version
