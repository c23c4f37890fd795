"""Endpoints and the immutable snapshots the proxy picks from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from warmgw.core.lifecycle import State
from warmgw.core.ramp import LatencyRamp, SlowStart
from warmgw.core.shapes import ShapeKey


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What discovery says about a replica: its identity, address and pool."""

    name: str
    url: str
    pool: str = "default"
    model: str | None = None  # None: learn it from /v1/models


class Endpoint:
    """One replica as the registry tracks it. Membership changes go through the Registry;
    a front-end's tickets (core.routing) touch only its load (`inflight`, `tickets`), its
    counters and `seen`."""

    __slots__ = (
        "_spec",
        "adapters",
        "cache_tokens",
        "consecutive_errors",
        "ejections",
        "errors",
        "inflight",
        "max_model_len",
        "models",
        "name",
        "pool",
        "ramp",
        "ratio",
        "ratio_n",
        "reason",
        "removed",
        "requests",
        "retry_at",
        "seen",
        "since",
        "start_marker",
        "state",
        "tickets",
        "url",
        "warm_reference",
        "warm_rounds",
    )

    def __init__(self, spec: EndpointSpec, now: float) -> None:
        self.spec = spec
        self.url = spec.url.rstrip("/")
        self.state = State.DISCOVERED
        self.since = now
        self.reason = "discovered"
        self.models: frozenset[str] = frozenset({spec.model} if spec.model else ())
        self.adapters: frozenset[str] = frozenset()  # models that are LoRA adapters
        self.max_model_len: int | None = None
        self.cache_tokens = 0  # its KV cache in tokens, as its /metrics says (0: unknown)
        self.start_marker: float | None = None  # process_start_time_seconds, when exported
        self.inflight = 0
        self.tickets: set[Any] = set()  # the attempts in flight (core.routing.Ticket)
        # the feature-shapes this process has served: True if its warmup sent them
        self.seen: dict[ShapeKey, bool] = {}
        self.requests = 0
        self.errors = 0
        self.consecutive_errors = 0
        self.ejections = 0
        self.retry_at = 0.0
        self.ramp: LatencyRamp | SlowStart | None = None
        self.ratio: float | None = None  # EWMA of latency over the fleet's, same shapes
        self.ratio_n = 0
        self.removed = False  # discovery no longer lists it: gone once drained
        self.warm_reference: dict[str, float] = {}
        self.warm_rounds = 0

    @property
    def spec(self) -> EndpointSpec:
        return self._spec

    @spec.setter
    def spec(self, spec: EndpointSpec) -> None:
        self._spec = spec
        # copied, not properties: read on every request (a property costs ~60 ns a read)
        self.name = spec.name
        self.pool = spec.pool

    def weight(self, now: float) -> float:
        ramp = self.ramp
        return 1.0 if ramp is None else ramp.weight(now)

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, {self.state}, inflight={self.inflight})"


class Group:
    """The routable endpoints of one pool for one model, and that pool's traffic share."""

    __slots__ = ("endpoints", "full", "pool", "ramping", "share", "uniform")

    def __init__(self, pool: str, share: float, endpoints: tuple[Endpoint, ...],
                 split: tuple[tuple[Endpoint, ...], tuple[Endpoint, ...]] | None = None
                 ) -> None:
        self.pool = pool
        self.share = share
        self.endpoints = endpoints
        # at full weight (1) / with a weight that moves; a pick costs O(len(ramping))
        if split is None:
            split = (tuple(e for e in endpoints if e.ramp is None),
                     tuple(e for e in endpoints if e.ramp is not None))
        self.full, self.ramping = split
        self.uniform = not self.ramping

    @classmethod
    def of(cls, pool: str, share: float, full: tuple[Endpoint, ...],
           ramping: tuple[Endpoint, ...]) -> Group:
        """A group from its members already split (the registry keeps them so)."""
        return cls(pool, share, full + ramping if ramping else full, (full, ramping))


@dataclass(frozen=True, slots=True)
class Route:
    """Where requests for one model may go: one group per pool with a share > 0."""

    groups: tuple[Group, ...]
    total_share: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    routes: dict[str, Route] = field(default_factory=dict)
    known_models: frozenset[str] = frozenset()
    # some replica has not said yet which models it serves (just discovered, or a gateway
    # that just started): an unknown model may be one of them, so 503, not 404
    learning: bool = False
