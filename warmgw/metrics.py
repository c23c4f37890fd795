"""Prometheus metrics, read from the gateway's state at scrape time, rendered off the loop.

Nothing here runs per request: the proxy bumps plain counters (core/telemetry.py) and a
scrape turns them, and the registry's and blue-green's state, into metric families.
Label sets are bounded: pools, replicas, routes, status codes, states, outcomes.

Rendering without blocking the request path: of the three ways (maintain the text as the
state changes, cache it per scrape interval, or build it off the loop), this builds it off
the loop. A scrape first copies what it needs into plain tuples on the event loop (`capture`:
one short pass over the replicas, no formatting, so the copy is consistent: nothing moves
while it runs), then builds the families and the text format in a worker thread
(`asyncio.to_thread`), where 1,000 replicas' worth of samples (8 one-hot states each) no
longer holds up the loop. Maintaining the text incrementally would put metric work on every
state change and request; a cache would serve stale values or still pay the full render on
the loop once per interval.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from warmgw.core.bluegreen import BlueGreen
from warmgw.core.lifecycle import ROUTABLE, State
from warmgw.core.model import EndpointSpec
from warmgw.core.policy import TrafficPolicy
from warmgw.core.registry import Registry
from warmgw.core.routing import Router
from warmgw.core.telemetry import Histogram
from warmgw.loopsteps import LoopSteps

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, doc: str, labels: list[str],
               series: list[HistRow]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, buckets, total in series:
        fam.add_metric(list(values), buckets, sum_value=total)
    return fam


class WarmupView(Protocol):
    """What the metrics read of the warmups (warmgw.supervisor.Supervisor)."""

    warmups: dict[str, int]
    warmup_seconds: Histogram

    @property
    def requests_sent(self) -> int: ...

    @property
    def refused(self) -> int: ...

    def engine(self, name: str) -> dict[str, float]: ...


Row = tuple[tuple[str, ...], float]
HistRow = tuple[tuple[str, ...], list[tuple[str, int]], float]


@dataclass(frozen=True)
class Captured:
    """Everything one scrape reports, as plain data copied on the loop."""

    requests: list[tuple[tuple[str, str, str, int], int]]
    ttfb: list[HistRow]
    duration: list[HistRow]
    # (spec, inflight, state, weight if routable, ratio or None, the vLLM gauges last read)
    replicas: list[tuple[EndpointSpec, int, State, float, float | None, dict[str, float]]]
    policy: TrafficPolicy
    transitions: list[Row]
    warmups: list[Row]
    warmup_requests: int
    warmup_seconds: HistRow
    refused: int
    cold_hits: list[Row]
    coverage: float | None
    profile_shapes: int
    pools: frozenset[str]
    cutovers: list[Row]
    cutover_in_progress: bool
    kept_prefixes: tuple[int, int] = (0, 0)  # (kept, bytes); 0 with keep_prefixes off


def _hist(labels: tuple[str, ...], h: Histogram) -> HistRow:
    return labels, h.cumulative(), h.total


class GatewayCollector:
    def __init__(self, registry: Registry, bluegreen: BlueGreen, router: Router,
                 warmups: WarmupView) -> None:
        self.registry = registry
        self.bluegreen = bluegreen
        self.router = router
        self.warmups = warmups

    def capture(self) -> Captured:
        """Copy the state a scrape reports (on the loop: cheap, no formatting)."""
        reg = self.registry
        now = reg.clock.now()
        policy = reg.policy
        sup = self.warmups
        stats = self.router.stats
        engine = sup.engine
        # per replica only immutable values (the spec, the state, the gauges' dict, which
        # is replaced, never changed); the weight is read here (a ramp moves)
        replicas = [
            (ep.spec, ep.inflight, ep.state,
             ep.weight(now) if ep.state in ROUTABLE else 0.0, ep.ratio, engine(ep.spec.name))
            for ep in reg.endpoints.values()
        ]
        bg = self.bluegreen
        return Captured(
            requests=list(stats.requests.items()),
            ttfb=[_hist((p,), h) for p, h in stats.ttfb.items()],
            duration=[_hist((p,), h) for p, h in stats.duration.items()],
            replicas=replicas,
            policy=policy,
            transitions=[((s.value,), n) for s, n in reg.transitions_total.items()],
            warmups=[((o,), n) for o, n in sup.warmups.items()],
            warmup_requests=sup.requests_sent,
            warmup_seconds=_hist((), sup.warmup_seconds),
            refused=sup.refused,
            cold_hits=[(k, n) for k, n in sorted(self.router.cold_hits.items())],
            coverage=self.router.coverage.ratio(now),
            profile_shapes=len(self.router.profile.shapes),
            pools=frozenset(p for p, _ in policy.shares) | {r[0].pool for r in replicas},
            cutovers=[((o,), bg.outcomes.get(o, 0)) for o in ("done", "aborted")],
            cutover_in_progress=bg.in_progress is not None,
            kept_prefixes=(0, 0) if (k := self.router.keeper) is None else (len(k), k.bytes),
        )


def families(c: Captured) -> Iterator[Metric]:
    """The metric families of one capture (in the worker thread)."""
    req = CounterMetricFamily(
        "warmgw_requests", "User requests by pool, replica, route and status code "
        "(499: the client left; replica empty: answered by the gateway itself).",
        labels=["pool", "replica", "route", "code"],
    )
    for (pool, replica, route, code), n in c.requests:
        req.add_metric([pool, replica, route, str(code)], n)
    yield req
    yield _histogram(
        "warmgw_request_ttfb_seconds",
        "Time to first byte of successful user requests (streams: first chunk).",
        ["pool"], c.ttfb,
    )
    yield _histogram("warmgw_request_duration_seconds",
                     "Whole duration of successful user requests.", ["pool"], c.duration)

    inflight = GaugeMetricFamily("warmgw_replica_inflight_requests",
                                 "User requests in flight per replica.",
                                 labels=["pool", "replica"])
    state = GaugeMetricFamily("warmgw_replica_state",
                              "1 for the state each replica is in.",
                              labels=["pool", "replica", "state"])
    weight = GaugeMetricFamily("warmgw_replica_weight",
                               "Routing weight now (0 when not routable).",
                               labels=["pool", "replica"])
    ratio = GaugeMetricFamily("warmgw_replica_latency_ratio",
                              "Replica latency over the fleet's for the same request shapes.",
                              labels=["pool", "replica"])
    waiting = GaugeMetricFamily("warmgw_replica_vllm_requests_waiting",
                                "vllm:num_requests_waiting as last scraped from the replica.",
                                labels=["pool", "replica"])
    kv = GaugeMetricFamily("warmgw_replica_vllm_kv_cache_usage_ratio",
                           "vllm:kv_cache_usage_perc (0-1) as last scraped from the replica.",
                           labels=["pool", "replica"])
    share = c.policy.share
    for spec, n_inflight, st, w, r, g in c.replicas:
        pool, name = spec.pool, spec.name
        labels = [pool, name]
        inflight.add_metric(labels, n_inflight)
        for s in State:
            state.add_metric([pool, name, s.value], 1.0 if st is s else 0.0)
        weight.add_metric(labels, w if share(pool) > 0 else 0.0)
        if r is not None:
            ratio.add_metric(labels, r)
        if "num_requests_waiting" in g:
            waiting.add_metric(labels, g["num_requests_waiting"])
        if "kv_cache_usage_perc" in g:
            kv.add_metric(labels, g["kv_cache_usage_perc"])
    yield from (inflight, state, weight, ratio, waiting, kv)

    yield _counter("warmgw_replica_transitions", "Lifecycle transitions, by the state entered.",
                   ["to"], c.transitions)
    yield _counter("warmgw_warmups", "Warmups finished, by outcome.", ["outcome"], c.warmups)
    yield CounterMetricFamily("warmgw_warmup_requests",
                              "Synthetic warmup requests sent to replicas.",
                              value=c.warmup_requests)
    yield _histogram("warmgw_warmup_duration_seconds", "How long warmups took.",
                     [], [c.warmup_seconds])
    yield CounterMetricFamily("warmgw_warmup_refused",
                              "Warmup requests a replica refused (4xx): the shape was "
                              "dropped from that warmup, the replica not blamed.",
                              value=c.refused)
    yield _counter("warmgw_cold_hits", "User requests that paid a first-use cost on a replica "
                   "the gateway had called warm, by what was new to it.",
                   ["replica", "reason"], c.cold_hits)
    coverage = GaugeMetricFamily(
        "warmgw_warmup_coverage_ratio", "Share of the last hour's user requests whose "
        "feature-shape the serving replica's warmup had sent (no sample before the first).",
        labels=[])
    if c.coverage is not None:
        coverage.add_metric([], c.coverage)
    yield coverage
    yield GaugeMetricFamily("warmgw_prefixes_kept", "Hot shared prefixes kept as text to "
                            "warm replicas with (routing.prefix.keep_prefixes; 0 when off).",
                            value=c.kept_prefixes[0])
    yield GaugeMetricFamily("warmgw_prefixes_kept_bytes", "Bytes of prefix text kept.",
                            value=c.kept_prefixes[1])
    yield GaugeMetricFamily("warmgw_profile_shapes",
                            "Feature-shapes in the learned traffic profile.",
                            value=c.profile_shapes)
    pool_share = GaugeMetricFamily("warmgw_pool_share", "Share of new requests per pool.",
                              labels=["pool"])
    for p in sorted(c.pools):
        pool_share.add_metric([p], c.policy.share(p))
    yield pool_share
    yield _counter("warmgw_cutovers", "Cutovers finished, by outcome.", ["outcome"],
                   c.cutovers)
    yield GaugeMetricFamily("warmgw_cutover_in_progress",
                            "1 while a gradual cutover is moving shares.",
                            value=1.0 if c.cutover_in_progress else 0.0)


def _counter(name: str, doc: str, labels: list[str], rows: list[Row]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=labels)
    for values, n in rows:
        fam.add_metric(list(values), n)
    return fam


class RuntimeCollector:
    """The gateway process's own load, for leak hunting (soak tests, dashboards)."""

    def __init__(self, connections: Callable[[], int], steps: LoopSteps | None = None) -> None:
        self.connections = connections
        self.steps = steps

    def capture(self) -> list[Metric]:
        """Small: built on the loop."""
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # outside the event loop
            return []
        out: list[Metric] = [
            GaugeMetricFamily("warmgw_asyncio_tasks",
                              "asyncio tasks alive in the gateway's event loop.", value=tasks),
            GaugeMetricFamily("warmgw_client_connections",
                              "Client connections open on the gateway's listeners.",
                              value=self.connections()),
        ]
        if self.steps is not None:
            longest, what = self.steps.take()
            g = GaugeMetricFamily(
                "warmgw_loop_step_max_cpu_seconds", "The longest event-loop step since the "
                "previous scrape, in thread CPU time (WARMGW_LOOP_STEPS).", labels=["step"])
            g.add_metric([what], longest)
            out.append(g)
            out.append(CounterMetricFamily("warmgw_loop_steps", "Event-loop steps run.",
                                           value=self.steps.steps))
        return out


class _Families(Collector):
    def __init__(self, fams: Iterator[Metric]) -> None:
        self.fams = fams

    def collect(self) -> Iterator[Metric]:
        return self.fams


class Scraper:
    """One /metrics scrape: capture on the loop, build and format in a worker thread."""

    def __init__(self, gateway: GatewayCollector, runtime: RuntimeCollector) -> None:
        self.gateway = gateway
        self.runtime = runtime

    async def render(self) -> bytes:
        captured = self.gateway.capture()
        runtime = self.runtime.capture()
        return await asyncio.to_thread(render_captured, captured, runtime)


def render_captured(captured: Captured, runtime: list[Metric]) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Families(itertools.chain(families(captured), runtime)))
    return generate_latest(reg)
