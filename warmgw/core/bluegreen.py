"""Blue-green at the gateway: which pool is active, cutovers (instant or gradual with
automatic abort), drain tracking and rollback. Pure: the clock is injected, the policy
goes to the registry, and every change is handed to `on_change` (the edge persists it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from warmgw.core.clock import Clock
from warmgw.core.lifecycle import WARM, State
from warmgw.core.policy import TrafficPolicy
from warmgw.core.registry import Registry


class CutoverError(Exception):
    """A refused or malformed call; status is the HTTP status the admin API answers."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.details = details or {}


@dataclass(frozen=True, slots=True)
class CutoverParams:
    min_warm: int = 1  # the target needs at least this many warm replicas ...
    min_warm_fraction: float = 1.0  # ... and this fraction of the active pool's warm ones
    drain_deadline: float = 300.0  # s; in-flight requests on the old pool are cut after
    rollback_window: float = 600.0  # s; the old pool is kept warm for a rollback
    keep_warm_interval: float = 10.0  # s between keep-warm requests to a standby replica


@dataclass(frozen=True, slots=True)
class CutoverRequest:
    to: str
    mode: str = "instant"  # or "gradual"
    duration: float = 60.0  # gradual: over how long the share moves
    steps: int = 5
    max_error_rate: float = 0.05  # gradual: abort when the target fails more than this
    max_latency_ratio: float = 2.0  # gradual: or is this much slower than the fleet
    force: bool = False  # skip the warm-capacity check
    expect_from: str | None = None  # refuse (409) unless this pool is the active one


@dataclass(slots=True)
class CutoverRecord:
    id: int
    frm: str
    to: str
    mode: str
    started: float
    outcome: str = "running"  # running, done, aborted
    reason: str = ""
    finished: float | None = None
    drained: float | None = None  # when the old pool had no request in flight
    share: float = 0.0  # the target's current share

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PoolCount:
    total: int = 0
    warm: int = 0
    ready: int = 0
    inflight: int = 0


def pool_counts(replicas: Iterable[tuple[str, State, int]]) -> dict[str, PoolCount]:
    """Replicas, warm ones, ready ones and requests in flight per pool, from (pool, state,
    in flight) per replica."""
    counts: dict[str, list[int]] = {}
    for pool, state, inflight in replicas:
        c = counts.get(pool)
        if c is None:
            c = counts[pool] = [0, 0, 0, 0]
        c[0] += 1
        c[1] += state in WARM
        c[2] += state is State.READY
        c[3] += inflight
    return {pool: PoolCount(*c) for pool, c in counts.items()}


@dataclass(slots=True)
class _Gradual:
    req: CutoverRequest
    record: CutoverRecord
    base_requests: int
    base_errors: int
    step: int = 1


@dataclass(slots=True)
class PolicyState:
    active: str
    previous: str | None = None
    shares: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class BlueGreen:
    def __init__(
        self,
        registry: Registry,
        params: CutoverParams,
        clock: Clock,
        active: str,
        on_change: Callable[[PolicyState], None] | None = None,
    ) -> None:
        self.registry = registry
        self.p = params
        self.clock = clock
        self.on_change = on_change
        self.active = active
        self.previous: str | None = None
        self.history: deque[CutoverRecord] = deque(maxlen=50)
        self._gradual: _Gradual | None = None
        self._draining: list[tuple[CutoverRecord, float]] = []  # (record, deadline)
        self._next_id = 1
        self.outcomes: dict[str, int] = {}  # finished cutovers by outcome, since start
        registry.set_policy(TrafficPolicy.single(active))

    # -- state ----------------------------------------------------------------------------

    def restore(self, state: PolicyState, follow: bool = False) -> None:
        """Take a persisted policy: after a restart, or (follow) one that another gateway
        replica wrote, whose running cutover it drives itself."""
        self.active = state.active
        self.previous = state.previous
        self._gradual = None
        self.registry.set_policy(TrafficPolicy.of(state.shares or {state.active: 1.0}))
        self.history.clear()
        for h in state.history[-(self.history.maxlen or 50):]:
            rec = CutoverRecord(**h)
            if rec.outcome == "running" and not follow:  # the restart stopped it here
                rec.outcome, rec.reason = "interrupted", "gateway restarted mid-cutover"
            self.history.append(rec)
            self._next_id = max(self._next_id, rec.id + 1)

    def state(self) -> PolicyState:
        return PolicyState(
            self.active,
            self.previous,
            self.registry.policy.as_dict(),
            [r.as_dict() for r in self.history],
        )

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.state())

    @property
    def in_progress(self) -> CutoverRecord | None:
        return self._gradual.record if self._gradual else None

    def kept_warm(self) -> set[str]:
        """Inactive pools still inside their rollback window: the gateway keeps them warm
        with light synthetic traffic so that a rollback is as fast as the cutover was."""
        now = self.clock.now()
        return {
            r.frm for r in self.history
            if r.outcome == "done" and r.frm != self.active and r.finished is not None
            and now - r.finished < self.p.rollback_window
        }

    def pools(self) -> dict[str, PoolCount]:
        return pool_counts((ep.pool, ep.state, ep.inflight)
                           for ep in self.registry.endpoints.values())

    # -- commands -------------------------------------------------------------------------

    def cutover(self, req: CutoverRequest) -> CutoverRecord:
        pools = self.pools()
        if req.mode not in ("instant", "gradual"):
            raise CutoverError(400, f"mode must be instant or gradual, got {req.mode!r}")
        if req.to not in pools:
            raise CutoverError(404, f"no pool named {req.to!r} (pools: {sorted(pools)})")
        if req.expect_from is not None and req.expect_from != self.active:
            raise CutoverError(
                409, f"the active pool is {self.active!r}, not {req.expect_from!r}: "
                "someone else switched first", {"active": self.active},
            )
        g = self._gradual
        if g is not None and req.to != g.record.frm:
            raise CutoverError(
                409, f"a gradual cutover {g.record.frm} -> {g.record.to} is in progress; "
                f"roll back (to {g.record.frm}) first", {"in_progress": g.record.as_dict()},
            )
        if g is None and req.to == self.active:
            raise CutoverError(409, f"pool {req.to!r} is already active")
        if not req.force:
            self._check_capacity(req.to, pools)
        if g is not None:  # a cutover back to where a gradual one started: abort it
            self._finish(g.record, "aborted", "rolled back by operator")
            self._gradual = None
        frm = self.active
        rec = CutoverRecord(self._next_id, frm, req.to, req.mode, self.clock.now())
        self._next_id += 1
        self.history.append(rec)
        if req.mode == "instant":
            self._switch(frm, req.to, rec)
            self._finish(rec, "done", "instant")
        else:
            if req.steps < 1 or req.duration <= 0:
                raise CutoverError(400, "gradual needs steps >= 1 and duration > 0")
            r = self._pool_requests(req.to)
            self._gradual = _Gradual(req, rec, r[0], r[1])
            self._set_shares(frm, req.to, 1.0 / req.steps, rec)
        self._changed()
        return rec

    def rollback(self, force: bool = False) -> CutoverRecord:
        g = self._gradual
        target = g.record.frm if g is not None else self.previous
        if target is None:
            raise CutoverError(409, "nothing to roll back to: no cutover has happened")
        return self.cutover(CutoverRequest(to=target, force=force))

    def _check_capacity(self, to: str, pools: dict[str, PoolCount]) -> None:
        have = pools[to].warm
        active_warm = pools.get(self.active, PoolCount()).warm
        need = max(self.p.min_warm, math.ceil(self.p.min_warm_fraction * active_warm))
        if have < need:
            raise CutoverError(
                409,
                f"pool {to!r} has {have} warm replica(s), needs {need} "
                f"(active pool {self.active!r} has {active_warm}); wait for warmup or force",
                {"target_warm": have, "needed": need, "active_warm": active_warm},
            )

    def _switch(self, frm: str, to: str, rec: CutoverRecord) -> None:
        self.registry.set_policy(TrafficPolicy.single(to))
        self.previous, self.active = frm, to
        rec.share = 1.0
        self._draining.append((rec, self.clock.now() + self.p.drain_deadline))

    def _set_shares(self, frm: str, to: str, share: float, rec: CutoverRecord) -> None:
        rec.share = share
        self.registry.set_policy(TrafficPolicy.of({frm: 1.0 - share, to: share}))

    def _finish(self, rec: CutoverRecord, outcome: str, reason: str) -> None:
        rec.outcome, rec.reason, rec.finished = outcome, reason, self.clock.now()
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _pool_requests(self, pool: str) -> tuple[int, int]:
        eps = [e for e in self.registry.endpoints.values() if e.pool == pool]
        return sum(e.requests for e in eps), sum(e.errors for e in eps)

    # -- time -----------------------------------------------------------------------------

    def tick(self) -> list[str]:
        """Move a gradual cutover on, abort it on bad numbers, track drains. Returns the
        pools whose drain deadline has just passed (their in-flight requests get cut)."""
        now = self.clock.now()
        g = self._gradual
        if g is not None:
            self._advance(g, now)
        overdue: list[str] = []
        still: list[tuple[CutoverRecord, float]] = []
        for rec, deadline in self._draining:
            old = self.pools().get(rec.frm, PoolCount())
            if rec.frm == self.active:
                continue  # rolled back before it drained
            if old.inflight == 0:
                rec.drained = now
                self._changed()
            elif now >= deadline:
                rec.drained = now
                rec.reason += f"; drain deadline passed with {old.inflight} in flight"
                overdue.append(rec.frm)
                self._changed()
            else:
                still.append((rec, deadline))
        self._draining = still
        return overdue

    def _advance(self, g: _Gradual, now: float) -> None:
        req, rec = g.req, g.record
        requests, errors = self._pool_requests(req.to)
        n, e = requests - g.base_requests, errors - g.base_errors
        if n >= 20 and e / n > req.max_error_rate:
            self._abort(g, f"target error rate {e / n:.1%} > {req.max_error_rate:.1%}")
            return
        ratios = [
            ep.ratio for ep in self.registry.endpoints.values()
            if ep.pool == req.to and ep.ratio is not None and ep.ratio_n >= 10
        ]
        if ratios and sum(ratios) / len(ratios) > req.max_latency_ratio:
            ratio = sum(ratios) / len(ratios)
            self._abort(g, f"target latency {ratio:.2f}x the fleet's > {req.max_latency_ratio}")
            return
        step = min(req.steps, 1 + int((now - rec.started) / (req.duration / req.steps)))
        if step == g.step:
            return
        g.step = step
        if step >= req.steps:
            self._gradual = None
            self._switch(rec.frm, rec.to, rec)
            self._finish(rec, "done", f"gradual over {req.duration:g} s")
        else:
            self._set_shares(rec.frm, rec.to, step / req.steps, rec)
        self._changed()

    def _abort(self, g: _Gradual, why: str) -> None:
        self._gradual = None
        self.registry.set_policy(TrafficPolicy.single(g.record.frm))
        g.record.share = 0.0
        self._finish(g.record, "aborted", why)
        self._changed()


def request_from_json(data: Any) -> CutoverRequest:
    """A CutoverRequest from an admin call's JSON body; CutoverError(400) naming the field."""
    if not isinstance(data, dict):
        raise CutoverError(400, "the body must be a JSON object")
    known = {f for f in CutoverRequest.__dataclass_fields__}
    aliases = {"from": "expect_from"}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name not in known:
            raise CutoverError(400, f"unknown field {key!r} (known: {sorted(known)})")
        kwargs[name] = value
    if not isinstance(kwargs.get("to"), str) or not kwargs["to"]:
        raise CutoverError(400, "field 'to' must name a pool")
    checks: dict[str, tuple[type | tuple[type, ...], str]] = {
        "mode": (str, "instant or gradual"),
        "duration": ((int, float), "a number of seconds > 0"),
        "steps": (int, "a whole number >= 1"),
        "max_error_rate": ((int, float), "a fraction"),
        "max_latency_ratio": ((int, float), "a number"),
        "force": (bool, "true or false"),
        "expect_from": (str, "a pool name"),
    }
    for name, (types, what) in checks.items():
        if name in kwargs and (
            not isinstance(kwargs[name], types)
            or (isinstance(kwargs[name], bool) and types is not bool)
        ):
            raise CutoverError(400, f"field {name!r} must be {what}, got {kwargs[name]!r}")
    return replace(CutoverRequest(to=kwargs["to"]), **kwargs)
