"""Counters the request path keeps cheaply; exported at scrape time (warmgw/metrics.py).

The proxy only increments plain ints here: no locks, no label lookups in a metrics
library on the hot path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)

class Histogram:
    """Cumulative-at-export histogram: counts per bucket, a sum and a count."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, cumulative count)] including +Inf, as Prometheus wants it."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class RequestStats:
    """User requests by (pool, replica, route, status), and latency by pool."""

    __slots__ = ("duration", "requests", "ttfb")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, int], int] = {}
        self.ttfb: dict[str, Histogram] = {}
        self.duration: dict[str, Histogram] = {}

    def count(self, pool: str, replica: str, route: str, status: int) -> None:
        key = (pool, replica, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def latency(self, pool: str, ttfb: float, duration: float) -> None:
        h = self.ttfb.get(pool)
        if h is None:
            h = self.ttfb[pool] = Histogram()
            self.duration[pool] = Histogram()
        d = self.duration[pool]
        bounds = h.bounds  # both histograms share the bounds: one search when equal
        i = bisect_left(bounds, ttfb)
        h.counts[i] += 1
        h.total += ttfb
        h.count += 1
        d.counts[i if duration == ttfb else bisect_left(bounds, duration)] += 1
        d.total += duration
        d.count += 1
