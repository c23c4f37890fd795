"""The routing core's one interface for every front-end (the HTTP proxy, the Envoy
endpoint picker): request facts in, a ticket out, outcomes reported on the ticket.

    facts = RequestFacts(...)            # extracted once by the front-end
    route = router.resolve(snapshot, facts.model)  # a Route, or a Refusal (404 / 503)
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
Each counts against the replica alike (a failure); only NOT_SENT may be sent again to
another replica by the front-end.

Pure: no I/O; the clock and randomness are injected. Transitions that a failure causes are
published as data by the registry and handled by their owners later, never inside the
request that reported them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from enum import Enum
from itertools import count
from typing import NamedTuple

from warmgw.core.affinity import Affinity
from warmgw.core.clock import Clock
from warmgw.core.events import Feed
from warmgw.core.facts import Refusal, RequestFacts
from warmgw.core.keep import PrefixKeeper
from warmgw.core.model import Endpoint, Route, Snapshot
from warmgw.core.picker import pick
from warmgw.core.prefix import RoutingParams
from warmgw.core.profile import Coverage, ProfileParams, TrafficProfile
from warmgw.core.registry import Registry
from warmgw.core.shapes import DEFAULT_BYTES_PER_TOKEN, ShapeKey, TokenRatios, fine
from warmgw.core.telemetry import RequestStats


class Failure(Enum):
    NOT_SENT = "not_sent"
    UNANSWERED = "unanswered"
    TAKEN = "taken"


MAX_SEEN = 4096  # feature-shapes remembered per replica
_new_key = tuple.__new__  # a ShapeKey without NamedTuple's Python-level __new__


class Ticket:
    """One attempt of one request on one endpoint."""

    __slots__ = ("cancel", "ep", "facts", "router", "t0", "ttfb", "uncached")

    def __init__(self, router: Router, ep: Endpoint, facts: RequestFacts, t0: float,
                 cancel: Callable[[], object] | None, uncached: int = -1) -> None:
        self.router = router
        # prompt tokens ep is expected to compute (not in its prefix cache), estimated from
        # the prefix index at pick time; -1: latency is not judged per uncached token
        self.uncached = uncached
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

    def complete(self, status: int, streamed: bool = False, prompt_tokens: int = 0,
                 cached_tokens: int = -1) -> None:
        """The replica answered in full with this status. A streamed answer's latency is
        its time to first byte (first_byte()), any other's the whole exchange.
        prompt_tokens: the exact prompt size, when the replica reported it (usage);
        cached_tokens: the part of it found in its prefix cache, when it said (-1: not).
        With `uncached` set, the latency is keyed by the uncached part of the prompt."""
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
        route = facts.route
        model = facts.model or ""
        key = facts.key
        uncached = self.uncached
        if uncached >= 0:  # the replica's count, else the estimate made at pick time
            if cached_tokens >= 0 and prompt_tokens > cached_tokens:
                uncached = prompt_tokens - cached_tokens
            key = (uncached.bit_length() << 9) | (key & 511)
        if route != "chat" and route != "completions":
            router.registry.observe(ep, model, key, latency)
        else:
            if prompt_tokens and not ep.requests & 7:  # a sample is enough: it moves slowly
                router.ratios.learn(model, facts.prompt_bytes, prompt_tokens)
                if facts.chunks and router.affinity is not None:
                    router.affinity.learn(model, facts.text_bytes, prompt_tokens)
            shape = _new_key(ShapeKey, (model, route, facts.stream,
                                        fine(prompt_tokens or facts.tokens), facts.features))
            seen = ep.seen
            warmed = seen.get(shape)
            first = warmed is None
            if first:
                if len(seen) >= MAX_SEEN:
                    seen.clear()  # bounded; shapes it forgot count as first uses again
                seen[shape] = False
            ratio = router.registry.observe(ep, model, key, latency, first)
            router.profile.record(shape, prompt_tokens, now)
            router.coverage.add(warmed is True, now)
            if first and ratio is not None and ratio >= router.profile_params.cold_ratio:
                router.cold_hit(ep, shape, ratio, now)
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


class ColdHit(NamedTuple):
    """A user request that paid a first-use cost on a replica the gateway called warm."""

    replica: str
    reason: str  # what was new to it: schema, tools, logprobs, n, media, adapter, prompt_size
    shape: ShapeKey
    ratio: float  # its latency over the fleet's for that shape
    at: float


class Router:
    def __init__(self, registry: Registry, clock: Clock, rng: random.Random,
                 naive: bool = False, profile: ProfileParams | None = None,
                 routing: RoutingParams | None = None) -> None:
        self.registry = registry
        self.clock = clock
        self.rng = rng
        self.stats = RequestStats()
        self._cursor = count() if naive else None  # round-robin baseline
        # prefix / session affinity (core.affinity); None: off (never with round robin)
        on = routing is not None and routing.active and not naive
        self.routing = routing if on else None  # front-ends pass it to facts.from_json
        self.affinity = Affinity(routing) if on and routing is not None else None
        # hot shared prefixes kept as text for warmups (core.keep), fed by the front-end
        self.keeper = (PrefixKeeper(routing.prefix) if on and routing is not None
                       and routing.prefix.keep_prefixes else None)
        p = self.profile_params = profile or ProfileParams()
        self.ratios = TokenRatios()  # bytes per token per model, from /tokenize
        self.profile = TrafficProfile(p)
        self.coverage = Coverage(p.coverage_window)
        self.cold_hits: dict[tuple[str, str], int] = {}  # (replica, reason) -> count
        self.cold: Feed[ColdHit] = Feed()  # each cold hit, for the edge to log

    def cold_hit(self, ep: Endpoint, shape: ShapeKey, ratio: float, now: float) -> None:
        """A user request was the first of its shape on ep and far slower than the fleet's
        (Ticket.complete, which also counts it in the profile and the coverage): counted,
        published, and pinned in the profile so that warmups send it."""
        reason = cold_reason(shape, ep.adapters, ep.seen)
        k = (ep.name, reason)
        self.cold_hits[k] = self.cold_hits.get(k, 0) + 1
        self.profile.pin(shape, now)
        self.cold.publish(ColdHit(ep.name, reason, shape, ratio, now))

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
        if model in snap.known_models or snap.learning:
            return Refusal(503, f"no replica serving model '{model}' is routable now",
                           "service_unavailable", "no_replica", retry=True)
        return Refusal(404, f"The model `{model}` does not exist.", "invalid_request_error",
                       "model_not_found", "model")

    def pick(self, route: Route, facts: RequestFacts, tried: Collection[Endpoint] = (),
             cancel: Callable[[], object] | None = None) -> Ticket | None:
        """An endpoint for one attempt (none of `tried`), its in-flight count taken."""
        now = self.clock.now()
        aff = self.affinity
        uncached = -1
        if aff is not None and (facts.chunks or facts.session is not None):
            depth = 0
            if tried:
                ep = pick(route, self.rng, now, tried)
            else:
                ep, depth = aff.choose(route, facts, self.rng, now)
            if ep is None:
                return None
            model = facts.model or ""
            tpc = aff.tokens_per_chunk(model, self.ratios.ratios.get(model,
                                                                     DEFAULT_BYTES_PER_TOKEN))
            if aff.params.prefix.uncached_latency and facts.chunks:
                uncached = max(1, facts.tokens - int(depth * tpc))
            aff.record(ep, facts, aff.capacity(tpc, ep.cache_tokens), now)
        else:
            ep = pick(route, self.rng, now, tried, self._cursor)
            if ep is None:
                return None
        ep.inflight += 1
        ep.requests += 1
        ticket = Ticket(self, ep, facts, now, cancel, uncached)
        ep.tickets.add(ticket)
        return ticket

    def moved(self, ticket: Ticket, to: Endpoint, why: str) -> Ticket:
        """The front-end's proxy sent the attempt elsewhere than picked (Envoy's fallback
        after the picked endpoint failed to take it): that one counts a failure it could
        not take (NOT_SENT), the ticket closes, and a new one on `to` carries the outcome."""
        ticket.fail(Failure.NOT_SENT, why)
        ticket.close()
        to.inflight += 1
        to.requests += 1
        moved = Ticket(self, to, ticket.facts, ticket.t0, ticket.cancel)
        # the estimate was the picked one's; the fallback was not chosen for its cache
        moved.uncached = ticket.facts.tokens if ticket.uncached >= 0 else -1
        to.tickets.add(moved)
        return moved

    def alternates(self, route: Route, first: Endpoint, n: int) -> list[Endpoint]:
        """Up to n more endpoints, in the order the picker would try them after `first`
        (fallbacks a proxy may go down on its own); no in-flight count is taken."""
        now = self.clock.now()
        tried = [first]
        for _ in range(n):
            ep = pick(route, self.rng, now, tried)
            if ep is None:
                break
            tried.append(ep)
        return tried[1:]

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


def cold_reason(shape: ShapeKey, adapters: frozenset[str], seen: Collection[ShapeKey] = ()
                ) -> str:
    """What a cold hit was the first to use on its replica, as one of a few label values:
    the first of its features that no other shape the replica has served had (seen), so a
    request that brought only a new prompt size is "prompt_size" even if it carried a
    schema the replica knew. O(len(seen)): run for cold hits only."""
    f = shape.features
    others = [k for k in seen if k != shape]
    if f.schema and all(k.features.schema != f.schema for k in others):
        return "schema"
    if f.tools and all(k.features.tools != f.tools for k in others):
        return "tools"
    if f.logprobs and all(not k.features.logprobs for k in others):
        return "logprobs"
    if f.n > 1 and all(k.features.n < 2 for k in others):
        return "n"
    if f.media and all(k.features.media != f.media for k in others):
        return "media"
    if shape.model in adapters and all(k.model != shape.model for k in others):
        return "adapter"
    return "prompt_size"


