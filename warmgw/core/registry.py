"""The registry: applies discovery deltas, lifecycle events and request outcomes to the
endpoints, and publishes an immutable snapshot of what is routable.

Pure: no I/O. Every transition is published as data (`transitions`, a core.events.Feed);
the owners that react to them (warmgw.supervisor runs probes and warmups, the Kubernetes
discovery patches the readiness gate, warmgw.replicas drops a gone replica's edge state)
drain their inboxes later, never inside the call that caused the move. Front-ends read
`snapshot` and report outcomes through core.routing tickets.

Discovery reports deltas, each applied in O(1): add(spec), update(spec), remove(name).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from warmgw.core.clock import Clock
from warmgw.core.events import Feed, Inbox
from warmgw.core.lifecycle import ROUTABLE, State, check
from warmgw.core.model import Endpoint, EndpointSpec, Snapshot
from warmgw.core.policy import TrafficPolicy
from warmgw.core.ramp import LatencyRamp, RampParams, SlowStart, SlowStartParams
from warmgw.core.routable import RoutableSet
from warmgw.core.shapes import ShapeKey
from warmgw.core.stats import FleetBaseline, FleetParams


class Strategy(StrEnum):
    WARM = "warm"  # warmgw: warm with synthetic traffic, then ramp by latency
    SLOW_START = "slow_start"  # baseline: no warmup, Envoy's time-based slow start
    ROUND_ROBIN = "round_robin"  # baseline: no warmup, plain round-robin


@dataclass(frozen=True, slots=True)
class OutlierParams:
    consecutive_errors: int = 5
    latency_ratio: float = 3.0
    suspect_ratio: float = 1.5  # above this a replica no longer feeds the fleet baseline
    min_samples: int = 20
    alpha: float = 0.1
    backoff_base: float = 1.0
    backoff_max: float = 30.0


@dataclass(frozen=True, slots=True)
class LifecycleParams:
    strategy: Strategy = Strategy.WARM
    ramp: RampParams = field(default_factory=RampParams)
    slow_start: SlowStartParams = field(default_factory=SlowStartParams)
    outlier: OutlierParams = field(default_factory=OutlierParams)
    fleet: FleetParams = field(default_factory=FleetParams)


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    frm: State
    to: State
    reason: str
    at: float
    url: str = field(default="", compare=False)  # where the replica was, for the edges


class UnknownEndpoint(LookupError):  # not KeyError: mypyc compiles no subclass of it
    def __str__(self) -> str:
        return f"no replica named {self.args[0]!r}"


class Registry:
    def __init__(self, params: LifecycleParams, clock: Clock, policy: TrafficPolicy) -> None:
        self.p = params
        self.clock = clock
        self.policy = policy
        self.endpoints: dict[str, Endpoint] = {}
        self.fleet = FleetBaseline(params.fleet)
        self.warm_reference: dict[str, dict[str, float]] = {}  # model -> warm shape -> s
        self.transitions: Feed[Transition] = Feed()
        self.history: deque[Transition] = deque(maxlen=500)
        self.transitions_total: dict[State, int] = {}
        self._version = 0
        self._snapshot: Snapshot | None = None
        self._routable = RoutableSet()

    def subscribe(self) -> Inbox[Transition]:
        """An inbox of every transition from now on (see core.events)."""
        return self.transitions.subscribe()

    # -- reading -----------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = self._build()
        return snap

    def get(self, name: str) -> Endpoint:
        ep = self.endpoints.get(name)
        if ep is None:
            raise UnknownEndpoint(name)
        return ep

    def _build(self) -> Snapshot:
        self._version += 1
        return self._routable.snapshot(self._version, self.policy)

    def _changed(self, ep: Endpoint | None = None) -> None:
        """The snapshot is stale; with ep: that replica's place in the routable set and
        its models are looked at again (call after any change of its state, models or pool);
        without: every route (the shares changed)."""
        self._snapshot = None
        if ep is None:
            self._routable.all_changed()
        else:
            live = ep.state is not State.GONE and self.endpoints.get(ep.name) is ep
            self._routable.update(ep, live)

    # -- moving ------------------------------------------------------------------------

    def _move(self, ep: Endpoint, to: State, reason: str) -> None:
        frm = ep.state
        check(ep.name, frm, to)
        now = self.clock.now()
        ep.state = to
        ep.since = now
        ep.reason = reason
        if to is not State.RAMPING:
            ep.ramp = None
        if to is State.READY:
            ep.ejections = 0  # backoff starts over once it proved itself
        if frm in ROUTABLE or to in ROUTABLE or to is State.GONE or frm is State.DISCOVERED:
            self._changed(ep)
        t = Transition(ep.name, frm, to, reason, now, ep.url)
        self.history.append(t)
        self.transitions_total[to] = self.transitions_total.get(to, 0) + 1
        self.transitions.publish(t)

    def set_policy(self, policy: TrafficPolicy) -> None:
        self.policy = policy
        self._changed()

    def add(self, spec: EndpointSpec) -> Endpoint:
        """Discovery lists a replica (new, or listed again): O(1)."""
        ep = self.endpoints.get(spec.name)
        if ep is None or ep.state is State.GONE:
            ep = self.endpoints[spec.name] = Endpoint(spec, self.clock.now())
            self._move(ep, State.PROBING, "discovered")
            return ep
        if ep.removed:
            ep.removed = False
            if ep.state is State.DRAINING:
                self._move(ep, State.PROBING, "listed again")
        if spec != ep.spec:
            self._respec(ep, spec)
        return ep

    def remove(self, name: str) -> None:
        """Discovery no longer lists a replica: it drains, and is gone once nothing is in
        flight on it (now, if nothing is): O(1)."""
        ep = self.endpoints.get(name)
        if ep is None or ep.removed:
            return
        ep.removed = True
        if ep.state is not State.DRAINING:
            self._move(ep, State.DRAINING, "no longer listed")
        if ep.inflight == 0:
            self._move(ep, State.GONE, "drained")
            del self.endpoints[name]

    def sync(self, specs: Iterable[EndpointSpec]) -> None:
        """Make the registry match a whole list (a source that only knows the whole list,
        e.g. a config file): the deltas between it and what is known, then a tick."""
        desired = {s.name: s for s in specs}
        for spec in desired.values():
            self.add(spec)
        for name in [n for n in self.endpoints if n not in desired]:
            self.remove(name)
        self.tick()

    def _respec(self, ep: Endpoint, spec: EndpointSpec) -> None:
        moved = spec.url.rstrip("/") != ep.url
        ep.spec = spec
        ep.url = spec.url.rstrip("/")
        if spec.model:
            ep.models = frozenset({spec.model})
        self._changed(ep)
        if moved and ep.state not in (State.PROBING, State.DRAINING):
            self.eject(ep, "address changed", cold=True)

    def probe_ok(
        self, name: str, models: frozenset[str], max_model_len: int | None, marker: float | None,
        adapters: frozenset[str] = frozenset(),
    ) -> None:
        ep = self.get(name)
        if ep.state is not State.PROBING:
            return
        if not ep.spec.model and models != ep.models:
            ep.models = models
            self._changed(ep)  # known_models changes: 503 (warming) rather than 404
        ep.adapters = adapters & ep.models
        ep.max_model_len = max_model_len
        ep.start_marker = marker
        strategy = self.p.strategy
        if strategy is Strategy.WARM:
            self._move(ep, State.WARMING, "answering; warming up")
        elif strategy is Strategy.SLOW_START:
            ep.ramp = SlowStart(self.p.slow_start, self.clock.now())
            self._move(ep, State.RAMPING, "answering; time-based slow start")
        else:
            self._move(ep, State.READY, "answering")

    def cache_size(self, name: str, tokens: int) -> None:
        """A replica's /metrics says how many tokens its KV cache holds (the prefix index
        sizes what it remembers of the replica from it)."""
        ep = self.endpoints.get(name)
        if ep is not None:
            ep.cache_tokens = max(0, tokens)

    def warm_done(self, name: str, rounds: int, reference: dict[str, float], why: str,
                  sent: Iterable[ShapeKey] = ()) -> None:
        """Warmup is over; sent: the feature-shapes it had the replica serve."""
        ep = self.get(name)
        if ep.state is not State.WARMING:
            return
        ep.warm_rounds = rounds
        for key in sent:
            ep.seen[key] = True
        if reference:  # only a converged warmup is a reference for the fleet
            ep.warm_reference = dict(reference)
            for m in ep.models:
                self.warm_reference[m] = dict(reference)
        ep.ramp = LatencyRamp(self.p.ramp, self.clock.now())
        self._move(ep, State.RAMPING, why)

    def warm_failed(self, name: str, why: str) -> None:
        ep = self.get(name)
        if ep.state is State.WARMING:
            self.eject(ep, why)

    def eject(self, ep: Endpoint, why: str, cold: bool = False) -> None:
        """Out of rotation; probed again after a backoff (at once if it went cold)."""
        if ep.state in (State.EJECTED, State.DRAINING, State.GONE):
            return
        if ep.state is State.DISCOVERED:
            return
        o = self.p.outlier
        ep.ejections += 1
        if cold:
            ep.seen.clear()  # a new process: every shape is new to it again
        # A replica that went cold (restart) is probed at once, the first time; one that
        # keeps going down before it is ready again (flapping) backs off like any other.
        backoff = min(o.backoff_max, o.backoff_base * 2 ** (ep.ejections - 1))
        delay = 0.0 if cold and ep.ejections == 1 else backoff
        ep.retry_at = self.clock.now() + delay
        ep.consecutive_errors = 0
        ep.ratio = None
        ep.ratio_n = 0
        self._move(ep, State.EJECTED, why)

    def drain(self, name: str, why: str = "drained by operator") -> Endpoint:
        ep = self.get(name)
        if ep.state is not State.DRAINING:
            self._move(ep, State.DRAINING, why)
        return ep

    def undrain(self, name: str) -> Endpoint:
        ep = self.get(name)
        if ep.removed:
            raise ValueError(f"replica {name!r} is no longer listed by discovery")
        if ep.state is State.DRAINING:
            self._move(ep, State.PROBING, "undrained by operator")
        return ep

    def rewarm(self, name: str) -> Endpoint:
        ep = self.get(name)
        if ep.state in (State.RAMPING, State.READY):
            ep.seen.clear()
            self._move(ep, State.WARMING, "rewarm asked by operator")
        elif ep.state is not State.WARMING:
            raise ValueError(f"replica {name!r} is {ep.state}; only a ramping or ready one rewarms")
        return ep

    # -- hot path ----------------------------------------------------------------------

    def observe(self, ep: Endpoint, model: str, key: int, seconds: float,
                first_use: bool = False) -> float | None:
        """A user request on ep succeeded; seconds is its latency (TTFB for streams).
        Returns its ratio to the fleet's latency for that key (None: too few samples).
        first_use: the first request of its feature-shape on ep, which may have paid a
        one-off cost (a compile, a load): it says nothing of ep's steady speed, so it
        feeds neither the fleet's baseline nor the ramp nor the outlier check."""
        ep.consecutive_errors = 0
        state = ep.state
        if first_use:
            return self.fleet.ratio(model, key, seconds) if state in ROUTABLE else None
        if state is State.READY:
            # a suspect endpoint stops feeding the baseline, so that the fleet's steady
            # state is the others' and its own ratio shows how far off it really is
            if ep.ratio is None or ep.ratio < self.p.outlier.suspect_ratio:
                ratio = self.fleet.observe(model, key, seconds)  # ratio, then update
            else:
                ratio = self.fleet.ratio(model, key, seconds)
            if ratio is not None:
                self._watch_latency(ep, ratio)
            return ratio
        if state is State.RAMPING:
            ramp = ep.ramp
            ratio = self.fleet.ratio(model, key, seconds)
            if ramp is not None and ratio is not None:
                ramp.observe(ratio, self.clock.now())
                a = self.p.ramp.ewma_alpha
                ep.ratio = ratio if ep.ratio is None else ep.ratio + a * (ratio - ep.ratio)
            return ratio
        return None

    def _watch_latency(self, ep: Endpoint, ratio: float) -> None:
        o = self.p.outlier
        ep.ratio_n += 1
        ep.ratio = ratio if ep.ratio is None else ep.ratio + o.alpha * (ratio - ep.ratio)
        if ep.ratio_n < o.min_samples or ep.ratio <= o.latency_ratio:
            return
        peers = self._routable_peers(ep)
        if not peers:
            return  # never eject the last routable replica of a model for latency
        # An outlier is slow next to its peers, not when the whole fleet slows down at once
        # (then every replica looks slow against the slower-moving baseline).
        ratios = sorted(e.ratio for e in peers if e.ratio is not None)
        typical = max(1.0, ratios[len(ratios) // 2]) if ratios else 1.0
        if ep.ratio > o.latency_ratio * typical:
            self.eject(ep, f"latency {ep.ratio:.1f}x the fleet's ({typical:.1f}x for its peers)")

    def _routable_peers(self, ep: Endpoint) -> list[Endpoint]:
        """Other ready endpoints serving ep's models in pools that get traffic now."""
        share = self.policy.share
        return [
            e for e in self.endpoints.values()
            if e is not ep and e.state is State.READY and e.models & ep.models
            and share(e.pool) > 0.0
        ]

    def failure(self, ep: Endpoint, why: str, down: bool = False) -> None:
        """A request on ep failed on ep's side (5xx, cut stream). down: the replica refused
        the connection, it is not running: out at once, and cold when it comes back."""
        ep.errors += 1
        ep.consecutive_errors += 1
        if down and ep.state in ROUTABLE:
            self.eject(ep, f"not reachable: {why}", cold=True)
            return
        limit = self.p.outlier.consecutive_errors
        if ep.consecutive_errors >= limit and ep.state in ROUTABLE:
            self.eject(ep, f"{ep.consecutive_errors} consecutive errors, last: {why}")

    # -- time --------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance what time alone moves: ramps end, drains finish, backoffs expire."""
        now = self.clock.now()
        gone = []
        for ep in list(self.endpoints.values()):
            state = ep.state
            if state is State.RAMPING and ep.ramp is not None:
                why = ep.ramp.done(now)
                if why is not None:
                    self._move(ep, State.READY, f"ramp over: {why}")
            elif state is State.EJECTED and now >= ep.retry_at:
                self._move(ep, State.PROBING, "backoff over; probing again")
            elif state is State.DRAINING and ep.removed and ep.inflight == 0:
                self._move(ep, State.GONE, "drained")
                gone.append(ep.name)
        for name in gone:
            del self.endpoints[name]
