"""The registry: discovery diffs, lifecycle events, outcomes and time, on a fake clock."""

from __future__ import annotations

import random

import pytest

from warmgw.core.clock import FakeClock
from warmgw.core.facts import Refusal
from warmgw.core.lifecycle import State
from warmgw.core.model import Endpoint, EndpointSpec
from warmgw.core.picker import pick
from warmgw.core.policy import TrafficPolicy
from warmgw.core.ramp import LatencyRamp, SlowStart
from warmgw.core.registry import (
    LifecycleParams,
    Registry,
    Strategy,
    Transition,
    UnknownEndpoint,
)
from warmgw.core.routing import Router
from warmgw.core.shapes import latency_key

S = State
M = "m"
KEY = latency_key("completions", False, 25, 16)
FAST = 0.1  # the fleet's latency for KEY
RAMP_TO_FULL = 8.7  # default ramp: 0.05 doubling every 2 s reaches 1 after 8.64 s


def st(ep: Endpoint) -> State:
    """ep's state now (a call, so type checkers do not narrow it across transitions)."""
    return ep.state


class World:
    """A registry on a fake clock, with every transition it announces."""

    def __init__(
        self,
        strategy: Strategy = Strategy.WARM,
        policy: TrafficPolicy | None = None,
    ) -> None:
        self.clock = FakeClock(1000.0)
        self.reg = Registry(
            LifecycleParams(strategy=strategy), self.clock, policy or TrafficPolicy.single("blue")
        )
        self._inbox = self.reg.subscribe()
        self._seen: list[Transition] = []

    @property
    def seen(self) -> list[Transition]:
        """Every transition published so far, in order."""
        self._seen.extend(self._inbox.take())
        return self._seen

    def ep(self, name: str) -> Endpoint:
        return self.reg.get(name)

    def state(self, name: str) -> State:
        return self.reg.get(name).state

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.reg.tick()

    def add(self, *names: str, pool: str = "blue", model: str | None = M) -> None:
        """Discovery lists these too (keeping what it listed before)."""
        specs = [e.spec for e in self.reg.endpoints.values() if not e.removed]
        specs += [EndpointSpec(n, f"http://{n}:8000", pool, model) for n in names]
        self.reg.sync(specs)

    def to_ramping(self, name: str) -> None:
        self.reg.probe_ok(name, frozenset({M}), 4096, None)
        self.reg.warm_done(name, 2, {"chat/json/p16/o16": 0.2}, "warm: converged")

    def to_ready(self, *names: str) -> None:
        for name in names:
            self.to_ramping(name)
        self.advance(RAMP_TO_FULL)  # no fleet baseline yet: nothing slows the ramp
        for name in names:
            assert self.state(name) is S.READY

    def fleet_traffic(self, n: int, seconds: float = FAST) -> None:
        """Requests answered by the rest of the fleet."""
        for _ in range(n):
            self.reg.fleet.update(M, KEY, seconds)

    def routable(self, model: str = M) -> dict[str, set[str]]:
        route = self.reg.snapshot.routes.get(model)
        if route is None:
            return {}
        return {g.pool: {e.name for e in g.endpoints} for g in route.groups}


# -- discovery -------------------------------------------------------------------------------


def test_sync_adds_endpoints_in_probing_and_records_transitions() -> None:
    w = World()
    w.add("a", "b")
    assert {n: e.state for n, e in w.reg.endpoints.items()} == {"a": S.PROBING, "b": S.PROBING}
    t = w.clock.now()
    expected = [
        Transition("a", S.DISCOVERED, S.PROBING, "discovered", t),
        Transition("b", S.DISCOVERED, S.PROBING, "discovered", t),
    ]
    assert w.seen == expected
    assert list(w.reg.history) == expected
    assert w.routable() == {}
    w.reg.sync([w.ep("a").spec, w.ep("b").spec])  # nothing new: nothing happens
    assert w.seen == expected


@pytest.mark.parametrize("state", [S.PROBING, S.WARMING, S.RAMPING, S.READY, S.EJECTED])
def test_removed_replica_drains_and_is_gone_only_when_idle(state: State) -> None:
    w = World()
    w.add("a", "keep")
    if state is not S.PROBING:
        w.reg.probe_ok("a", frozenset({M}), None, None)
    if state in (S.RAMPING, S.READY):
        w.reg.warm_done("a", 1, {}, "warm")
    if state is S.READY:
        w.advance(RAMP_TO_FULL)
    if state is S.EJECTED:
        w.reg.eject(w.ep("a"), "test")
    assert w.state("a") is state
    a = w.ep("a")
    a.inflight = 2  # a stream and a request still running
    w.reg.sync([w.ep("keep").spec])
    assert st(a) is S.DRAINING
    assert w.seen[-1].reason == "no longer listed"
    assert "a" not in w.routable().get("blue", set())
    w.advance(600.0)
    assert st(a) is S.DRAINING  # in flight work is never cut
    a.inflight = 1
    w.advance(1.0)
    assert st(a) is S.DRAINING
    a.inflight = 0
    w.reg.tick()
    assert st(a) is S.GONE
    assert (w.seen[-1].frm, w.seen[-1].to, w.seen[-1].reason) == (S.DRAINING, S.GONE, "drained")
    assert "a" not in w.reg.endpoints
    with pytest.raises(UnknownEndpoint, match="no replica named 'a'"):
        w.reg.get("a")


def test_listed_again_while_draining_is_probed_again() -> None:
    w = World()
    w.add("a")
    w.to_ready("a")
    spec = w.ep("a").spec
    w.ep("a").inflight = 1
    w.reg.sync([])
    assert w.state("a") is S.DRAINING
    w.reg.sync([spec])
    assert w.state("a") is S.PROBING
    assert w.seen[-1].reason == "listed again"
    w.ep("a").inflight = 0
    w.advance(5.0)
    assert w.state("a") is S.PROBING  # no longer on its way out


def test_gone_replica_listed_again_starts_over() -> None:
    w = World()
    w.add("a")
    w.to_ready("a")
    old = w.ep("a")
    spec = old.spec
    w.reg.sync([])
    assert "a" not in w.reg.endpoints
    w.reg.sync([spec])
    assert w.ep("a") is not old
    assert w.state("a") is S.PROBING


def test_address_change_makes_a_ready_replica_cold() -> None:
    w = World()
    w.add("a")
    w.to_ready("a")
    n = len(w.seen)
    w.reg.sync([EndpointSpec("a", "http://elsewhere:8000/", "blue", M)])
    # cold: out of rotation and probed again at once, no backoff
    assert [(t.frm, t.to, t.reason) for t in w.seen[n:]] == [
        (S.READY, S.EJECTED, "address changed"),
        (S.EJECTED, S.PROBING, "backoff over; probing again"),
    ]
    assert w.ep("a").url == "http://elsewhere:8000"
    assert w.routable() == {}


def test_pool_change_moves_the_replica_to_the_other_group() -> None:
    w = World(policy=TrafficPolicy.of({"blue": 1.0, "green": 1.0}))
    w.add("a", "b")
    w.to_ready("a", "b")
    assert w.routable() == {"blue": {"a", "b"}}
    w.reg.sync([w.ep("a").spec, EndpointSpec("b", "http://b:8000", "green", M)])
    assert w.routable() == {"blue": {"a"}, "green": {"b"}}


# -- probes and warmup -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "state", "ramp", "routable"),
    [
        (Strategy.WARM, S.WARMING, type(None), False),
        (Strategy.SLOW_START, S.RAMPING, SlowStart, True),
        (Strategy.ROUND_ROBIN, S.READY, type(None), True),
    ],
)
def test_probe_ok_leads_where_the_strategy_says(
    strategy: Strategy, state: State, ramp: type, routable: bool
) -> None:
    w = World(strategy)
    w.add("a", model=None)
    w.reg.probe_ok("a", frozenset({"served"}), 8192, 1234.5)
    a = w.ep("a")
    assert st(a) is state
    assert isinstance(a.ramp, ramp)
    assert (a.models, a.max_model_len, a.start_marker) == (frozenset({"served"}), 8192, 1234.5)
    assert (w.routable("served") == {"blue": {"a"}}) is routable
    assert w.seen[-1].frm is S.PROBING


def test_probe_ok_keeps_the_configured_model_and_is_ignored_unless_probing() -> None:
    w = World()
    w.add("a")  # configured to serve M
    w.reg.probe_ok("a", frozenset({"other"}), None, None)
    assert w.ep("a").models == {M}
    n = len(w.seen)
    w.reg.probe_ok("a", frozenset({M}), None, None)  # a late, duplicate probe
    assert len(w.seen) == n
    assert w.state("a") is S.WARMING


def test_warm_done_ramps_then_ready_after_enough_time_with_good_ratios() -> None:
    w = World()
    w.add("old", "new")
    w.to_ready("old")
    for _ in range(20):
        w.reg.observe(w.ep("old"), M, KEY, FAST)
    w.reg.probe_ok("new", frozenset({M}), None, None)
    assert "new" not in w.routable()["blue"]  # real traffic never reaches a warming replica
    w.reg.warm_done("new", 3, {"chat/json/p16/o16": 0.2}, "warm: converged after 3 rounds")
    new = w.ep("new")
    assert st(new) is S.RAMPING
    assert isinstance(new.ramp, LatencyRamp)
    assert w.seen[-1].reason == "warm: converged after 3 rounds"
    assert w.reg.warm_reference[M] == {"chat/json/p16/o16": 0.2}
    assert w.routable()["blue"] == {"old", "new"}
    assert new.weight(w.clock.now()) == pytest.approx(0.05)
    start, ready_after = w.clock.now(), None
    for _ in range(40):
        w.reg.observe(new, M, KEY, FAST * 1.1)  # as fast as the fleet, within tolerance
        w.advance(0.5)
        if st(new) is S.READY:
            ready_after = w.clock.now() - start
            break
    assert ready_after == pytest.approx(9.0)  # first tick after 8.64 s
    assert w.seen[-1].reason == "ramp over: converged"
    assert new.weight(w.clock.now()) == 1.0


def ramping_newcomer_cut_once() -> tuple[World, Endpoint, float]:
    """A fleet with one ready replica and a newcomer ramping since `since`, 4 s in (at
    weight 0.2) when one request three times slower than the fleet's cuts it to 0.1."""
    w = World()
    w.add("old", "new")
    w.to_ready("old")
    w.fleet_traffic(50)
    w.to_ramping("new")
    new = w.ep("new")
    since = w.clock.now()
    w.advance(4.0)
    assert new.weight(w.clock.now()) == pytest.approx(0.2)
    w.reg.observe(new, M, KEY, 3 * FAST)
    assert new.weight(w.clock.now()) == pytest.approx(0.1)
    return w, new, since


def test_ramping_replica_with_bad_ratios_loses_weight() -> None:
    w, new, new_since = ramping_newcomer_cut_once()
    assert new.ratio == pytest.approx(3.0)
    for _ in range(20):  # stays slow: held, never promoted for being on time
        w.reg.observe(new, M, KEY, 3 * FAST)
        w.advance(1.0)
        assert st(new) is S.RAMPING
    assert new.weight(w.clock.now()) < 0.1
    while st(new) is S.RAMPING:  # slow whenever it is asked: held until max_ramp_time
        w.reg.observe(new, M, KEY, 3 * FAST)
        w.advance(1.0)
    assert w.clock.now() - new_since >= 120.0
    assert w.seen[-1].reason == "ramp over: max ramp time"


def test_a_held_replica_resumes_once_its_slow_sample_is_old() -> None:
    """One slow request cuts a ramping replica's weight; at that low weight it may get no
    more requests for a long time, so the evidence fades (its distance from the fleet
    halves every doubling_time) and it grows back instead of waiting max_ramp_time."""
    w, new, _ = ramping_newcomer_cut_once()
    w.advance(3.0)  # 3.0 seen 3 s ago counts as 1 + 2 * 2 ** -1.5 = 1.71: still held
    assert new.weight(w.clock.now()) == pytest.approx(0.1)
    w.advance(20.0)  # faded at 4 + 2 log2(2 / 0.25) = 10 s, grown to 1 by 16.6 s
    assert st(new) is S.READY
    assert w.seen[-1].reason == "ramp over: converged"


def test_ramping_latency_does_not_move_the_fleet_baseline() -> None:
    w = World()
    w.add("old", "new")
    w.to_ready("old")
    w.fleet_traffic(50)
    w.to_ramping("new")
    for _ in range(100):
        w.reg.observe(w.ep("new"), M, KEY, 10.0)
    assert w.reg.fleet.ratio(M, KEY, FAST) == pytest.approx(1.0)


def test_replica_ramped_after_deadline_keeps_the_fleet_s_warm_reference() -> None:
    w = World()
    w.add("a", "b")
    w.to_ramping("a")  # converged: its latencies are the reference
    w.reg.probe_ok("b", frozenset({M}), None, None)
    w.reg.warm_done("b", 0, {}, "warmup deadline of 300 s passed; ramping anyway")
    assert w.reg.warm_reference[M] == {"chat/json/p16/o16": 0.2}


def test_warm_failed_ejects_and_retries_after_backoff() -> None:
    w = World()
    w.add("a")
    w.reg.probe_ok("a", frozenset({M}), None, None)
    w.reg.warm_failed("a", "warmup failed: 500")
    assert w.state("a") is S.EJECTED
    assert w.seen[-1].reason == "warmup failed: 500"
    w.advance(0.9)
    assert w.state("a") is S.EJECTED
    w.advance(0.1)
    assert w.state("a") is S.PROBING


# -- failures and outliers ---------------------------------------------------------------------

BACKOFF = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # base 1 s, doubling, capped at 30 s


def test_consecutive_failures_eject_with_exponential_backoff() -> None:
    w = World()
    w.add("a")
    a = w.ep("a")
    for delay in BACKOFF:
        w.to_ramping("a")
        for _ in range(4):
            w.reg.failure(a, "HTTP 502")
        assert st(a) is S.RAMPING
        w.reg.failure(a, "HTTP 503")
        assert st(a) is S.EJECTED
        assert w.seen[-1].reason == "5 consecutive errors, last: HTTP 503"
        assert "a" not in w.routable().get("blue", set())
        w.advance(delay - 0.01)
        assert st(a) is S.EJECTED, delay
        w.advance(0.01)
        assert st(a) is S.PROBING, delay
        assert w.seen[-1].reason == "backoff over; probing again"


def test_a_success_resets_the_failure_count() -> None:
    w = World()
    w.add("a")
    w.to_ready("a")
    a = w.ep("a")
    for _ in range(3):
        for _ in range(4):
            w.reg.failure(a, "HTTP 502")
        w.reg.observe(a, M, KEY, FAST)
    assert st(a) is S.READY
    assert a.errors == 12


def test_failures_outside_rotation_do_not_eject() -> None:
    w = World()
    w.add("a")
    w.reg.probe_ok("a", frozenset({M}), None, None)
    for _ in range(10):
        w.reg.failure(w.ep("a"), "HTTP 500")
    assert w.state("a") is S.WARMING  # the warmup decides, not user traffic


def test_backoff_starts_over_once_a_ramp_completes() -> None:
    w = World()
    w.add("a")
    a = w.ep("a")
    for delay in (1.0, 2.0):
        w.to_ramping("a")
        for _ in range(5):
            w.reg.failure(a, "HTTP 502")
        w.advance(delay)
        assert st(a) is S.PROBING
    w.to_ready("a")  # healthy again, ramp completed
    for _ in range(5):
        w.reg.failure(a, "HTTP 502")
    w.advance(1.0)
    assert st(a) is S.PROBING


@pytest.mark.parametrize(
    ("peer", "ejected"),
    [
        ("ready", True),
        ("none", False),
        ("ready, other model", False),
        ("ramping", False),
        ("draining", False),
        ("ejected", False),
    ],
)
def test_latency_outlier_ejection_needs_a_ready_peer(peer: str, ejected: bool) -> None:
    w = World()
    w.add("a")
    if peer != "none":
        w.add("b", model="other" if "other" in peer else M)
    w.to_ready(*w.reg.endpoints)
    b = w.reg.endpoints.get("b")
    if peer == "ramping":
        w.reg.rewarm("b")
        w.to_ramping("b")
    elif peer == "draining":
        w.reg.drain("b")
    elif peer == "ejected":
        assert b is not None
        w.reg.eject(b, "test")
    a = w.ep("a")
    w.fleet_traffic(100)
    for _ in range(40):  # a is ten times slower than the rest of the fleet
        w.fleet_traffic(9)
        w.reg.observe(a, M, KEY, 10 * FAST)
    assert (st(a) is S.EJECTED) is ejected
    if ejected:
        assert w.seen[-1].reason.startswith("latency ")
        assert "x the fleet's" in w.seen[-1].reason


def test_latency_outlier_needs_min_samples() -> None:
    w = World()
    w.add("a", "b")
    w.to_ready("a", "b")
    a, b = w.ep("a"), w.ep("b")
    for _ in range(100):
        w.reg.observe(b, M, KEY, FAST)  # the fleet baseline, through the real path
    for i in range(1, 21):
        for _ in range(9):
            w.reg.observe(b, M, KEY, FAST)
        w.reg.observe(a, M, KEY, 10 * FAST)
        assert (st(a) is S.EJECTED) is (i == 20), i
    assert st(b) is S.READY


def test_operator_drain_undrain_and_rewarm() -> None:
    w = World()
    w.add("a")
    w.to_ready("a")
    w.reg.drain("a")
    assert w.state("a") is S.DRAINING
    w.advance(60.0)
    assert w.state("a") is S.DRAINING  # still listed: held out, not removed
    w.reg.undrain("a")
    assert w.state("a") is S.PROBING
    with pytest.raises(ValueError, match="'a' is probing; only a ramping or ready one rewarms"):
        w.reg.rewarm("a")
    w.to_ready("a")
    w.reg.rewarm("a")
    assert w.state("a") is S.WARMING
    assert "a" not in w.routable().get("blue", set())
    w.ep("a").inflight = 1
    w.reg.sync([])
    with pytest.raises(ValueError, match="no longer listed"):
        w.reg.undrain("a")


# -- snapshots and policy ----------------------------------------------------------------------


def fleet_in_every_state(w: World) -> None:
    """blue: one replica per state; green: one ready replica."""
    w.add("probing", "warming", "ramping", "ready", "ejected", "draining")
    w.add("green", pool="green")
    for n in ("warming", "ramping", "ready", "ejected", "draining", "green"):
        w.reg.probe_ok(n, frozenset({M}), None, None)
    w.to_ready("ready", "draining", "green")
    w.to_ramping("ramping")
    w.reg.warm_failed("ejected", "test")
    w.reg.drain("draining")
    assert {n: e.state.value for n, e in w.reg.endpoints.items() if n != "green"} == {
        n: n for n in ("probing", "warming", "ramping", "ready", "ejected", "draining")
    }


@pytest.mark.parametrize(
    ("policy", "routable"),
    [
        (TrafficPolicy.single("blue"), {"blue": {"ramping", "ready"}}),
        (TrafficPolicy.single("green"), {"green": {"green"}}),
        (TrafficPolicy.of({"blue": 3.0, "green": 1.0}),
         {"blue": {"ramping", "ready"}, "green": {"green"}}),
        (TrafficPolicy.single("red"), {}),
    ],
)
def test_only_ramping_and_ready_replicas_of_pools_with_a_share_are_routable(
    policy: TrafficPolicy, routable: dict[str, set[str]]
) -> None:
    w = World(policy=policy)
    fleet_in_every_state(w)
    assert w.routable() == routable
    snap = w.reg.snapshot
    assert snap.known_models == {M}  # known even when nothing is routable
    if routable:
        route = snap.routes[M]
        assert route.total_share == pytest.approx(sum(policy.share(p) for p in routable))
        assert {g.pool: g.share for g in route.groups} == {p: policy.share(p) for p in routable}


def test_known_models_include_replicas_not_yet_routable() -> None:
    w = World()
    w.add("a", model="llama")
    w.add("b", model="qwen")
    w.to_ready("a")
    snap = w.reg.snapshot
    assert set(snap.routes) == {"llama"}
    assert snap.known_models == {"llama", "qwen"}


def test_known_models_follow_what_a_probe_learns() -> None:
    w = World()
    w.add("a", model=None)  # the model is learned from /v1/models
    assert w.reg.snapshot.known_models == frozenset()
    w.reg.probe_ok("a", frozenset({"llama"}), None, None)
    # warming: the proxy must answer 503 "not routable now", not 404 "does not exist"
    assert w.reg.snapshot.known_models == {"llama"}


def test_a_replica_not_yet_probed_makes_an_unknown_model_503_not_404() -> None:
    """A gateway (or endpoint picker) just restarted has not read /v1/models yet: a model
    it does not know may be served, so it asks the user to retry rather than deny it."""
    w = World()
    w.add("a", model=None)
    assert w.reg.snapshot.learning  # probing, models unknown
    refusal = Router(w.reg, w.clock, random.Random(1)).resolve(w.reg.snapshot, "llama")
    assert isinstance(refusal, Refusal) and refusal.status == 503 and refusal.retry
    w.reg.probe_ok("a", frozenset({"qwen"}), None, None)
    assert not w.reg.snapshot.learning
    refusal = Router(w.reg, w.clock, random.Random(1)).resolve(w.reg.snapshot, "llama")
    assert isinstance(refusal, Refusal) and refusal.status == 404


def test_snapshot_is_reused_until_something_changes() -> None:
    w = World()
    w.add("a", "b")
    w.to_ready("a")
    w.to_ramping("b")
    s1 = w.reg.snapshot
    assert w.reg.snapshot is s1
    # none of these change what is routable
    w.advance(1.0)  # b's weight grows, but weights are read at pick time
    w.reg.observe(w.ep("a"), M, KEY, FAST)
    w.reg.failure(w.ep("a"), "HTTP 502")
    w.ep("a").inflight += 3
    assert w.reg.snapshot is s1
    w.advance(RAMP_TO_FULL)  # b: ramping -> ready
    s2 = w.reg.snapshot
    assert s2 is not s1
    assert s2.version > s1.version
    w.reg.drain("a")
    s3 = w.reg.snapshot
    assert s3.version > s2.version
    assert w.routable() == {"blue": {"b"}}
    # an old snapshot still says what it said
    assert {e.name for g in s1.routes[M].groups for e in g.endpoints} == {"a", "b"}


def test_set_policy_switches_pools_atomically() -> None:
    w = World()
    w.add("b1", "b2")
    w.add("g1", "g2", pool="green")
    w.to_ready("b1", "b2", "g1", "g2")
    before = w.reg.snapshot
    w.reg.set_policy(TrafficPolicy.single("green"))
    after = w.reg.snapshot
    assert after.version > before.version
    rng = random.Random(11)
    picked_before = {pick(before.routes[M], rng, 0.0).name for _ in range(200)}  # type: ignore[union-attr]
    picked_after = {pick(after.routes[M], rng, 0.0).name for _ in range(200)}  # type: ignore[union-attr]
    assert picked_before == {"b1", "b2"}  # requests already routed from the old snapshot
    assert picked_after == {"g1", "g2"}  # every new request goes green, none blue
    w.reg.set_policy(TrafficPolicy.of({"blue": 0.9, "green": 0.1}))
    shift = w.reg.snapshot.routes[M]
    assert {g.pool: g.share for g in shift.groups} == {"blue": 0.9, "green": 0.1}
    assert shift.total_share == pytest.approx(1.0)


def test_a_flapping_replica_backs_off_even_when_it_goes_cold_each_time():
    from warmgw.core.clock import FakeClock
    from warmgw.core.model import EndpointSpec
    from warmgw.core.policy import TrafficPolicy
    from warmgw.core.registry import LifecycleParams, Registry, Strategy

    clock = FakeClock()
    reg = Registry(LifecycleParams(strategy=Strategy.WARM), clock, TrafficPolicy.single("p"))
    reg.sync([EndpointSpec("a", "http://127.0.0.1:1", "p")])
    ep = reg.get("a")
    waits = []
    for _ in range(4):
        reg.probe_ok("a", frozenset({"m"}), None, None)
        reg.eject(ep, "restarted", cold=True)  # down again before it was ever ready
        waits.append(ep.retry_at - clock.now())
        clock.advance(ep.retry_at - clock.now())
        reg.tick()
    assert waits == [0.0, 2.0, 4.0, 8.0]  # at once the first time, then growing
    reg.probe_ok("a", frozenset({"m"}), None, None)
    reg.warm_done("a", 1, {"k": 1.0}, "warm")
    clock.advance(1000)
    reg.tick()
    assert ep.state.value == "ready"
    reg.eject(ep, "restarted", cold=True)
    assert ep.retry_at == clock.now()  # ready in between: the next restart is probed at once


def _ready_fleet(n_blue: int, n_green: int = 0):
    from warmgw.core.clock import FakeClock
    from warmgw.core.model import EndpointSpec
    from warmgw.core.policy import TrafficPolicy
    from warmgw.core.registry import LifecycleParams, OutlierParams, Registry, Strategy
    from warmgw.core.stats import FleetParams

    clock = FakeClock()
    params = LifecycleParams(strategy=Strategy.ROUND_ROBIN,
                             outlier=OutlierParams(min_samples=5, alpha=0.5),
                             fleet=FleetParams(alpha=0.05, min_samples=5))
    reg = Registry(params, clock, TrafficPolicy.single("blue"))
    specs = [EndpointSpec(f"b{i}", f"http://127.0.0.1:{i + 1}", "blue") for i in range(n_blue)]
    specs += [EndpointSpec(f"g{i}", f"http://127.0.0.2:{i + 1}", "green") for i in range(n_green)]
    reg.sync(specs)
    for s in specs:
        reg.probe_ok(s.name, frozenset({"m"}), None, None)
    return reg


def test_latency_ejection_needs_a_peer_that_gets_traffic():
    reg = _ready_fleet(1, 2)  # one blue replica serving; green is warm but has no share
    b0 = reg.get("b0")
    for _ in range(20):
        reg.observe(b0, "m", 1, 0.1)
    for _ in range(40):
        reg.observe(b0, "m", 1, 1.0)  # ten times slower than its own baseline
    assert b0.state.value == "ready"  # the standby pool is no peer: never eject the last one


def test_a_fleet_wide_slowdown_ejects_nobody_but_a_lone_outlier_goes():
    reg = _ready_fleet(3)
    eps = [reg.get(f"b{i}") for i in range(3)]
    for _ in range(20):
        for e in eps:
            reg.observe(e, "m", 1, 0.1)
    for _ in range(30):  # everyone is 5x slower at once (a noisy neighbour, a GC storm)
        for e in eps:
            reg.observe(e, "m", 1, 0.5)
    assert [e.state.value for e in eps] == ["ready"] * 3
    for _ in range(60):  # then b2 alone stays slow while the others recover
        for e in eps[:2]:
            reg.observe(e, "m", 1, 0.1)
        reg.observe(eps[2], "m", 1, 2.0)
    assert [e.state.value for e in eps] == ["ready", "ready", "ejected"]
