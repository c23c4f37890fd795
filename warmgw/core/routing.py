"""The routing core's one interface for every front-end (the HTTP proxy, the Envoy
endpoint picker): request facts in, a ticket out, outcomes reported on the ticket.

    facts = RequestFacts(...)            # extracted once by the front-end
    route = router.resolve(facts.model)  # a Route, or a Refusal (404 / 503 / 400)
    ticket = router.pick(route, facts)   # an endpoint, its in-flight count taken
    ticket.first_byte()                  # the response began
    ticket.complete(status)              # or ticket.fail(Failure.X, why), or ticket.left()
    ticket.close()                       # always, in `finally`: the in-flight count returns

A failure is one of three classes, told apart by what the front-end saw:
- NOT_SENT: no connection, or an answer that says the request was not taken (503): safe
  to try another replica;
- UNANSWERED: sent on a reused connection that closed or reset before any byte of the
  response came back;
- TAKEN: bytes came back, or the request was consumed: the replica had it.
Each counts against the replica; which may be retried is the front-end's policy
(`retryable`).

Pure: no I/O; the clock and randomness are injected. Transitions that a failure causes are
published as data by the registry and handled by their owners later, never inside the
request that reported them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from enum import Enum
from itertools import count

from warmgw.core.clock import Clock
from warmgw.core.facts import Refusal, RequestFacts
from warmgw.core.model import Endpoint, Route, Snapshot
from warmgw.core.picker import pick
from warmgw.core.registry import Registry
from warmgw.core.telemetry import RequestStats


class Failure(Enum):
    NOT_SENT = "not_sent"
    UNANSWERED = "unanswered"
    TAKEN = "taken"


class Ticket:
    """One attempt of one request on one endpoint."""

    __slots__ = ("cancel", "ep", "facts", "router", "t0", "ttfb")

    def __init__(self, router: Router, ep: Endpoint, facts: RequestFacts, t0: float,
                 cancel: Callable[[], object] | None) -> None:
        self.router = router
        self.ep = ep
        self.facts = facts
        self.t0 = t0
        self.ttfb = -1.0
        self.cancel = cancel  # cuts the request (a drain deadline), if the front-end can

    def first_byte(self) -> None:
        if self.ttfb < 0.0:
            self.ttfb = self.router.clock.now() - self.t0

    def count(self, status: int) -> None:
        """Count an answer on this endpoint that is neither a success nor its failure (499,
        or 503 when the gateway itself is short of file descriptors)."""
        ep = self.ep
        self.router.stats.count(ep.pool, ep.name, self.facts.route, status)

    def complete(self, status: int, streamed: bool = False) -> None:
        """The replica answered in full with this status. A streamed answer's latency is
        its time to first byte (first_byte()), any other's the whole exchange."""
        router = self.router
        ep = self.ep
        facts = self.facts
        router.stats.count(ep.pool, ep.name, facts.route, status)
        if status >= 500:
            router.registry.failure(ep, f"HTTP {status}")
            return
        if status >= 400:
            return
        now = router.clock.now()
        if streamed:
            if self.ttfb < 0.0:
                return  # an empty stream says nothing of its latency
            latency = self.ttfb
        else:
            latency = now - self.t0
        router.registry.observe(ep, facts.model or "", facts.key, latency)
        router.stats.latency(ep.pool, latency, now - self.t0)

    def fail(self, kind: Failure, why: str, status: int = 0, down: bool = False) -> None:
        """The attempt failed on the replica's side; status is what the client is told
        (0: nothing, the request goes on elsewhere)."""
        self.router.registry.failure(self.ep, why, down=down)
        if status:
            self.count(status)

    def left(self) -> None:
        """The client went away (or the request was cut): 499."""
        self.count(499)

    def close(self) -> None:
        ep = self.ep
        ep.inflight -= 1
        ep.tickets.discard(self)


class Router:
    def __init__(self, registry: Registry, clock: Clock, rng: random.Random,
                 naive: bool = False) -> None:
        self.registry = registry
        self.clock = clock
        self.rng = rng
        self.stats = RequestStats()
        self._cursor = count() if naive else None  # round-robin baseline

    def resolve(self, snap: Snapshot, model: str | None) -> Route | Refusal:
        if model is None:
            route = next(iter(snap.routes.values()), None)
            if route is None:
                return Refusal(503, "no replica is routable yet", "service_unavailable",
                               "no_replica", retry=True)
            return route
        route = snap.routes.get(model)
        if route is not None:
            return route
        if model in snap.known_models:
            return Refusal(503, f"no replica serving model '{model}' is routable now",
                           "service_unavailable", "no_replica", retry=True)
        return Refusal(404, f"The model `{model}` does not exist.", "invalid_request_error",
                       "model_not_found", "model")

    def pick(self, route: Route, facts: RequestFacts, tried: Collection[Endpoint] = (),
             cancel: Callable[[], object] | None = None) -> Ticket | None:
        """An endpoint for one attempt (none of `tried`), its in-flight count taken."""
        now = self.clock.now()
        ep = pick(route, self.rng, now, tried, self._cursor)
        if ep is None:
            return None
        ep.inflight += 1
        ep.requests += 1
        ticket = Ticket(self, ep, facts, now, cancel)
        ep.tickets.add(ticket)
        return ticket

    def count_local(self, route: str, status: int) -> None:
        """An answer from the gateway itself (no endpoint)."""
        self.stats.count("", "", route, status)

    def cut(self, pool: str) -> int:
        """Cut the requests still in flight on a pool's endpoints; how many were cut."""
        n = 0
        for ep in list(self.registry.endpoints.values()):
            if ep.pool != pool:
                continue
            for t in list(ep.tickets):
                if t.cancel is not None:
                    t.cancel()
                    n += 1
        return n


def retryable(kind: Failure) -> bool:
    """What a front-end may send again elsewhere: only what the replica never took."""
    return kind is Failure.NOT_SENT
