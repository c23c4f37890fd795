"""The registry and picker under churn, in process: no sockets, a fake clock, a seeded rng.

For each fleet size N, a registry (warmgw.core.registry) holds N replicas of one model in
one pool, brought to READY through the real lifecycle (probe_ok -> warm_done -> a latency
ramp -> READY). Then, timed with time.perf_counter:

- pick, all ready: what the proxy does per request in the core: read the snapshot, look up
  the route, pick (weighted least-outstanding, two choices), in-flight +1, and for the
  request that finished 16 picks earlier in-flight -1 and `observe` its latency.
- pick, churning: the same, while replicas keep moving. Every `change_every` picks (every
  20 ms of fake time: 1 ms a pick, 1,000 requests/s) the driver makes one lifecycle call,
  as the supervisor, an operator or discovery would: a probe answered (probing ->
  warming), a warmup ended (warming -> ramping), a ready replica ejected or drained while
  fewer than `churn` of the fleet (5 %, at least 1) are out of READY, a drained one
  undrained, a ramping one rewarmed; and every 10th a discovery event (`sync`) adding a
  replica or removing one, the size staying ~N. Time does the rest: `tick` every 100
  picks (the gateway's 0.1 s ticker) ends ramps (~2 s here), backoffs and drains. The
  figure is per pick, without the time of the changes and ticks (those are below).
- per change: one lifecycle call plus the snapshot rebuild that the next pick pays.
- rebuild: one snapshot rebuild (what any change to the routable set costs).
- tick: one `tick`, O(N) by design (it scans for ramps, backoffs and drains that time
  ends); the gateway runs it 10 times a second.
- sync: one discovery event with nothing changed, O(N) by design.
- pod event: what Kubernetes discovery does on every pod watch event (KubeDiscovery._on_pods
  without its gate): read the pod that changed (`pods.view`) and add or remove it (a
  delta), then the snapshot read of the next request; apply and snapshot read also apart.
  A rolling update of N pods brings several events per pod, so this should not grow with N.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from warmgw.core.clock import FakeClock
from warmgw.core.lifecycle import State
from warmgw.core.model import Endpoint, EndpointSpec
from warmgw.core.picker import pick
from warmgw.core.policy import TrafficPolicy
from warmgw.core.ramp import RampParams
from warmgw.core.registry import LifecycleParams, OutlierParams, Registry, Transition
from warmgw.core.shapes import latency_key
from warmgw.discovery.pods import spec_of, view

MODEL = "tiny"
POOL = "blue"
KEY = latency_key("completions", False, 25, 16)
INFLIGHT = 16  # requests outstanding, as with 16 concurrent clients
PICK_DT = 0.001  # fake seconds per pick: 1,000 requests/s
TICK_EVERY = 100  # picks between ticks: the gateway ticks every 0.1 s
# Ramps of ~2 s and backoffs from 0.25 s, so that time moves replicas along too (the cost
# of a lifecycle call does not depend on these).
PARAMS = LifecycleParams(
    ramp=RampParams(doubling_time=0.5),
    outlier=OutlierParams(backoff_base=0.25, backoff_max=2.0),
)
RAMP_S = 2.5  # 0.05 doubling every 0.5 s is 1 after 2.2 s


@dataclass(frozen=True)
class CoreOptions:
    fleets: tuple[int, ...] = (2, 100, 1000)
    rounds: int = 3  # the N's interleaved, round by round; the median round is reported
    picks: int = 100_000  # per (N, round, loop)
    change_every: int = 20  # picks per state change in the churning loop
    churn: float = 0.05  # share of the fleet kept out of READY
    ops: int = 300  # rebuilds, ticks and syncs timed per (N, round)
    seed: int = 1


class Fleet:
    """A registry on a fake clock, and a driver that keeps part of it moving."""

    def __init__(self, n: int, opts: CoreOptions, rng: random.Random) -> None:
        self.clock = FakeClock(1000.0)
        self.rng = rng
        self.reg = Registry(PARAMS, self.clock, TrafficPolicy.single(POOL))
        self.by_state: dict[State, set[str]] = {s: set() for s in State}
        self._inbox = self.reg.subscribe()
        self._inbox.wake = self._take_transitions  # a driver on a fake clock: drained as published
        self.n = n
        self.next_id = n
        self.target = max(1, round(opts.churn * n))
        self.specs = {f"r{i}": self._spec(i) for i in range(n)}
        self.reg.sync(self.specs.values())
        for name in list(self.by_state[State.PROBING]):
            self._advance(name)  # -> warming
            self._advance(name)  # -> ramping
        self.clock.advance(RAMP_S)
        self.reg.tick()
        assert len(self.by_state[State.READY]) == n, {s: len(v) for s, v in self.by_state.items()}

    @staticmethod
    def _spec(i: int) -> EndpointSpec:
        return EndpointSpec(f"r{i}", f"http://127.0.{i // 250}.{i % 250 + 1}:8000", POOL, MODEL)

    def _take_transitions(self) -> None:
        for t in self._inbox.take():
            self._seen(t)

    def _seen(self, t: Transition) -> None:
        self.by_state[t.frm].discard(t.name)
        if t.to is not State.GONE:
            self.by_state[t.to].add(t.name)

    def _advance(self, name: str) -> None:
        """What the supervisor does once a probe answers, or a warmup ends."""
        ep = self.reg.endpoints[name]
        if ep.state is State.PROBING:
            self.reg.probe_ok(name, frozenset({MODEL}), 4096, 1.0)
        elif ep.state is State.WARMING:
            self.reg.warm_done(name, 1, {}, "warm")

    def out_of_ready(self) -> int:
        return sum(len(v) for s, v in self.by_state.items() if s is not State.READY)

    def plan_change(self, k: int) -> Callable[[], None] | None:
        """The next state change (not yet applied): one lifecycle call, or None when none
        can be made without emptying the fleet. Every 10th is a discovery event."""
        reg, by = self.reg, self.by_state
        ready = by[State.READY]
        if k % 10 == 9:  # discovery: a new replica added, or one removed (size stays ~N)
            specs = None
            if len(self.specs) < self.n:
                i = self.next_id
                self.next_id += 1
                self.specs[f"r{i}"] = self._spec(i)
                specs = list(self.specs.values())
            elif len(ready) > 1:
                del self.specs[self._any(ready)]
                specs = list(self.specs.values())
            if specs is not None:
                return lambda: reg.sync(specs)
        if by[State.PROBING] or by[State.WARMING]:  # a probe answered, a warmup ended
            name = self._any(by[State.PROBING] or by[State.WARMING])
            return lambda: self._advance(name)
        if self.out_of_ready() < self.target and len(ready) > 1:
            ep = reg.endpoints[self._any(ready)]
            if k % 4 == 0:
                return lambda: reg.eject(ep, "churn")  # back by itself after a backoff
            return lambda: self._drain(ep.name)
        drained = [n for n in by[State.DRAINING] if not reg.endpoints[n].removed]
        if drained:
            return lambda: self._undrain(drained[0])
        if by[State.RAMPING] and k % 3 == 0:  # an operator's rewarm
            name = self._any(by[State.RAMPING])
            return lambda: self._rewarm(name)
        return None

    def _drain(self, name: str) -> None:
        self.reg.drain(name)

    def _undrain(self, name: str) -> None:
        self.reg.undrain(name)

    def _rewarm(self, name: str) -> None:
        self.reg.rewarm(name)

    def _any(self, names: set[str]) -> str:
        """A random member, without sorting the whole set (set order is fixed per run)."""
        it = iter(names)
        for _ in range(self.rng.randrange(min(len(names), 64))):
            next(it)
        return next(it)


def _pick_loop(f: Fleet, picks: int, change_every: int) -> dict[str, float]:
    """picks requests through the core; with change_every > 0, churn meanwhile. The time
    of changes (with their rebuilds) and of ticks is taken apart from the picks'."""
    reg, clock, rng = f.reg, f.clock, f.rng
    outstanding: deque[Endpoint] = deque()
    change_s = tick_s = 0.0
    changes = ticks = 0
    ramping = 0
    perf = time.perf_counter
    gc.collect()
    t0 = perf()
    for k in range(picks):
        clock.t += PICK_DT
        route = reg.snapshot.routes[MODEL]
        ep = pick(route, rng, clock.t)
        if ep is None:
            raise RuntimeError("no endpoint picked")
        ep.inflight += 1
        outstanding.append(ep)
        if len(outstanding) > INFLIGHT:
            done = outstanding.popleft()
            done.inflight -= 1
            reg.observe(done, MODEL, KEY, 0.010)
        if change_every and k % change_every == 0:
            c0 = perf()
            change = f.plan_change(k // change_every)  # the driver's own work: not counted
            c1 = perf()
            if change is not None:
                change()
                reg.snapshot  # noqa: B018 - the rebuild the next pick would pay
                changes += 1
            c2 = perf()
            change_s += c2 - c1
            ramping += sum(len(g.ramping) for g in reg.snapshot.routes[MODEL].groups)
            tick_s += perf() - c2 + (c1 - c0)  # not the picks' either
        if k % TICK_EVERY == 0:
            c0 = perf()
            reg.tick()
            reg.snapshot  # noqa: B018 - a tick that moved a replica changed it
            tick_s += perf() - c0
            ticks += 1
    total = perf() - t0
    while outstanding:
        outstanding.popleft().inflight -= 1
    samples = max(1, picks // change_every) if change_every else 1
    return {
        "pick_us": (total - change_s - tick_s) * 1e6 / picks,
        "change_us": change_s * 1e6 / changes if changes else math.nan,
        "changes_per_s": changes / (picks * PICK_DT),
        "ramping_avg": ramping / samples if change_every else 0.0,
    }


def _per_op_us(op: Callable[[], object], count: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(count):
        op()
    return (time.perf_counter() - t0) * 1e6 / count


def _rebuild(reg: Registry) -> Callable[[], object]:
    def op() -> object:
        reg.set_policy(reg.policy)  # a change to the routable set: the snapshot is stale
        return reg.snapshot

    return op


def measure(n: int, opts: CoreOptions, seed: int) -> dict[str, float]:
    """One round for one fleet size."""
    f = Fleet(n, opts, random.Random(seed))
    out = {"n": float(n), "pick_ready_us": _pick_loop(f, opts.picks, 0)["pick_us"]}
    churn = _pick_loop(f, opts.picks, opts.change_every)
    out |= {
        "pick_churn_us": churn["pick_us"],
        "change_us": churn["change_us"],
        "changes_per_s": churn["changes_per_s"],
        "ramping_avg": churn["ramping_avg"],
        "out_of_ready": float(f.out_of_ready()),
        "endpoints": float(len(f.reg.endpoints)),
    }
    reg = f.reg
    specs = list(f.specs.values())
    out["rebuild_us"] = _per_op_us(_rebuild(reg), opts.ops)
    out["tick_us"] = _per_op_us(reg.tick, opts.ops)
    out["sync_us"] = _per_op_us(lambda: reg.sync(specs), opts.ops)
    out |= _pod_events(reg, specs, opts.ops)
    return out


def _pod_events(reg: Registry, specs: list[EndpointSpec], count: int) -> dict[str, float]:
    """What Kubernetes discovery does per pod watch event (KubeDiscovery._on_pods without
    its gate): read the one pod that changed, and add or remove it in the registry (a
    delta, O(1)); then the snapshot read that the next request makes (rebuilt if the event
    changed the routable set). Events alternate: a ready pod deleted, then created again
    (the fleet stays ~N); the apply and the snapshot read are timed apart."""
    pods = [_pod(s) for s in specs[: max(1, min(len(specs) - 1, count))]]
    apply_s = read_s = 0.0
    perf = time.perf_counter
    gc.collect()
    for i in range(count):
        obj = pods[(i // 2) % len(pods)]
        name = obj["metadata"]["name"]
        t0 = perf()
        if i % 2 == 0:
            reg.remove(name)
        else:
            v = view(obj, POOL_LABEL)
            if v.candidate:
                reg.add(spec_of(v, 8000, MODEL))
        t1 = perf()
        reg.snapshot  # noqa: B018 - the next request's read
        t2 = perf()
        apply_s += t1 - t0
        read_s += t2 - t1
    for obj in pods:  # back as it was
        reg.add(spec_of(view(obj, POOL_LABEL), 8000, MODEL))
    return {"pod_event_us": (apply_s + read_s) * 1e6 / count,
            "pod_apply_us": apply_s * 1e6 / count, "pod_snapshot_us": read_s * 1e6 / count}


POOL_LABEL = "warmgw.io/pool"


def _pod(spec: EndpointSpec) -> dict[str, Any]:
    """A running, ready pod as the API server sends it (the fields discovery reads, and
    about as many others)."""
    ip = spec.url.split("//")[1].split(":")[0]
    at = "2026-01-01T00:00:00Z"
    conditions = [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": at}
                  for t in ("PodReadyToStartContainers", "Initialized", "ContainersReady",
                            "Ready", "PodScheduled")]
    conditions.append({"type": "warmgw.io/warmed", "status": "True", "lastTransitionTime": at,
                       "message": "restartCount=0; by gw-0; warm"})
    return {
        "metadata": {"name": spec.name, "namespace": "llm", "uid": spec.name,
                     "resourceVersion": "1", "creationTimestamp": at,
                     "labels": {"app": "vllm", POOL_LABEL: spec.pool}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.9.1"}],
                 "readinessGates": [{"conditionType": "warmgw.io/warmed"}],
                 "nodeName": "node-1"},
        "status": {"phase": "Running", "conditions": conditions, "podIP": ip,
                   "podIPs": [{"ip": ip}], "startTime": at,
                   "containerStatuses": [{"name": "vllm", "ready": True, "restartCount": 0,
                                          "started": True}]},
    }


def run(opts: CoreOptions) -> dict[str, Any]:
    """Every N once per round, the order rotating; the median of the rounds per figure."""
    rounds: dict[int, list[dict[str, float]]] = {n: [] for n in opts.fleets}
    fleets = list(opts.fleets)
    t0 = time.monotonic()
    for r in range(opts.rounds):
        k = r % len(fleets)
        for n in fleets[k:] + fleets[:k]:
            rounds[n].append(measure(n, opts, opts.seed + r))
    return {"options": vars(opts) | {"fleets": list(opts.fleets)},
            "elapsed_s": round(time.monotonic() - t0, 1),
            "rows": [_median_row(rounds[n]) for n in opts.fleets],
            "rounds": {str(n): rs for n, rs in rounds.items()}}


def _median_row(rs: Sequence[dict[str, float]]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in rs) for k in rs[0]}
