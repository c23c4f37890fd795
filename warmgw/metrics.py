"""Prometheus metrics, read from the gateway's state at scrape time.

Nothing here runs per request: the proxy bumps plain counters (core/telemetry.py) and this
collector turns them, and the registry's and blue-green's state, into metric families.
Label sets are bounded: pools, replicas, routes, status codes, states, outcomes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
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
from warmgw.core.registry import Registry
from warmgw.core.routing import Router
from warmgw.core.telemetry import Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, doc: str, labels: list[str],
               series: list[tuple[list[str], Histogram]]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in series:
        fam.add_metric(values, h.cumulative(), sum_value=h.total)
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


class GatewayCollector(Collector):
    def __init__(self, registry: Registry, bluegreen: BlueGreen, router: Router,
                 warmups: WarmupView) -> None:
        self.registry = registry
        self.bluegreen = bluegreen
        self.router = router
        self.warmups = warmups

    def collect(self) -> Iterator[Metric]:
        reg = self.registry
        now = reg.clock.now()
        policy = reg.policy
        sup = self.warmups

        # user requests
        stats = self.router.stats
        c = CounterMetricFamily(
            "warmgw_requests", "User requests by pool, replica, route and status code "
            "(499: the client left; replica empty: answered by the gateway itself).",
            labels=["pool", "replica", "route", "code"],
        )
        for (pool, replica, route, code), n in stats.requests.items():
            c.add_metric([pool, replica, route, str(code)], n)
        yield c
        yield _histogram(
            "warmgw_request_ttfb_seconds",
            "Time to first byte of successful user requests (streams: first chunk).",
            ["pool"], [([p], h) for p, h in stats.ttfb.items()],
        )
        yield _histogram(
            "warmgw_request_duration_seconds",
            "Whole duration of successful user requests.",
            ["pool"], [([p], h) for p, h in stats.duration.items()],
        )

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
        for ep in reg.endpoints.values():
            labels = [ep.pool, ep.name]
            inflight.add_metric(labels, ep.inflight)
            for s in State:
                state.add_metric([*labels, s.value], 1.0 if ep.state is s else 0.0)
            routable = ep.state in ROUTABLE and policy.share(ep.pool) > 0
            weight.add_metric(labels, ep.weight(now) if routable else 0.0)
            if ep.ratio is not None:
                ratio.add_metric(labels, ep.ratio)
            g = sup.engine(ep.name)
            if "num_requests_waiting" in g:
                waiting.add_metric(labels, g["num_requests_waiting"])
            if "kv_cache_usage_perc" in g:
                kv.add_metric(labels, g["kv_cache_usage_perc"])
        yield from (inflight, state, weight, ratio, waiting, kv)

        t = CounterMetricFamily("warmgw_replica_transitions",
                                "Lifecycle transitions, by the state entered.", labels=["to"])
        for s, n in reg.transitions_total.items():
            t.add_metric([s.value], n)
        yield t

        # warmups
        w = CounterMetricFamily("warmgw_warmups", "Warmups finished, by outcome.",
                                labels=["outcome"])
        for outcome, n in sup.warmups.items():
            w.add_metric([outcome], n)
        yield w
        yield CounterMetricFamily("warmgw_warmup_requests",
                                  "Synthetic warmup requests sent to replicas.",
                                  value=sup.requests_sent)
        yield _histogram("warmgw_warmup_duration_seconds", "How long warmups took.",
                         [], [([], sup.warmup_seconds)])
        yield CounterMetricFamily("warmgw_warmup_refused",
                                  "Warmup requests a replica refused (4xx): the shape was "
                                  "dropped from that warmup, the replica not blamed.",
                                  value=sup.refused)
        hits = CounterMetricFamily(
            "warmgw_cold_hits", "User requests that paid a first-use cost on a replica the "
            "gateway had called warm, by what was new to it.", labels=["replica", "reason"])
        for (replica, reason), n in sorted(self.router.cold_hits.items()):
            hits.add_metric([replica, reason], n)
        yield hits
        coverage = GaugeMetricFamily(
            "warmgw_warmup_coverage_ratio", "Share of the last hour's user requests whose "
            "feature-shape the serving replica's warmup had sent (no sample before the first).",
            labels=[])
        covered = self.router.coverage.ratio(now)
        if covered is not None:
            coverage.add_metric([], covered)
        yield coverage
        yield GaugeMetricFamily("warmgw_profile_shapes",
                                "Feature-shapes in the learned traffic profile.",
                                value=len(self.router.profile.shapes))

        bg = self.bluegreen
        share = GaugeMetricFamily("warmgw_pool_share", "Share of new requests per pool.",
                                  labels=["pool"])
        pools = set(bg.pools()) | {p for p, _ in policy.shares}
        for pool in sorted(pools):
            share.add_metric([pool], policy.share(pool))
        yield share
        cut = CounterMetricFamily("warmgw_cutovers", "Cutovers finished, by outcome.",
                                  labels=["outcome"])
        for outcome in ("done", "aborted"):
            cut.add_metric([outcome], bg.outcomes.get(outcome, 0))
        yield cut
        yield GaugeMetricFamily("warmgw_cutover_in_progress",
                                "1 while a gradual cutover is moving shares.",
                                value=1.0 if bg.in_progress else 0.0)


class RuntimeCollector(Collector):
    """The gateway process's own load, for leak hunting (soak tests, dashboards)."""

    def __init__(self, connections: Callable[[], int]) -> None:
        self.connections = connections

    def collect(self) -> Iterator[Metric]:
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # collected outside the event loop
            return
        yield GaugeMetricFamily("warmgw_asyncio_tasks",
                                "asyncio tasks alive in the gateway's event loop.", value=tasks)
        yield GaugeMetricFamily("warmgw_client_connections",
                                "Client connections open on the gateway's listeners.",
                                value=self.connections())


def registry_for(gateway: GatewayCollector, runtime: RuntimeCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(gateway)
    reg.register(runtime)
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
