"""Weight laws for an endpoint that has just joined: warmgw's latency ramp and Envoy's
time-based slow start (the baseline it is compared with).

Latency ramp. An endpoint starts at `initial_weight`. While the EWMA of its latency ratio
r (its latency over the fleet's for requests of the same shape, see stats.py) stays within
tolerance, r <= 1 + tolerance, its weight doubles every `doubling_time` seconds:

    w(t) = min(1, w0 * 2 ** ((t - t0) / doubling_time))

When r rises above 1 + tolerance, the weight is cut: w0 = max(min_weight, w(t) * shrink),
t0 = t, and it holds there until r is within tolerance again (at most one cut per
doubling_time, so one burst of slow requests does not drive it to the floor). Evidence
fades: between samples r's distance from 1 halves every doubling_time, so a replica held
after a slow request resumes growing even if, at its low weight among many replicas, it
gets too few requests to prove itself (a slow one is cut again by its next request; a
join of 100 replicas showed replicas held for max_ramp_time by one slow request each).
The endpoint is promoted to ready once w(t) reaches 1 with r within tolerance, or when
`max_ramp_time` has passed since the ramp began, whatever the weight.

Envoy slow start (baseline). Time only, whatever the endpoint's latency:

    w(t) = max(min_weight_percent, ((t - t_start) / window) ** (1 / aggression))

Weights are functions of the current time, evaluated at pick time, so nothing goes stale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RampParams:
    initial_weight: float = 0.05
    min_weight: float = 0.02
    doubling_time: float = 2.0
    tolerance: float = 0.25
    shrink: float = 0.5
    max_ramp_time: float = 120.0
    ewma_alpha: float = 0.3


@dataclass(frozen=True, slots=True)
class SlowStartParams:
    window: float = 30.0
    aggression: float = 1.0
    min_weight_percent: float = 0.1


class LatencyRamp:
    """warmgw's law: exponential growth while latency is within tolerance of the fleet."""

    __slots__ = ("at", "cut_at", "growing", "p", "ratio", "samples", "started", "t0", "w0")

    def __init__(self, params: RampParams, now: float) -> None:
        self.p = params
        self.started = now
        self.w0 = params.initial_weight
        self.t0 = now
        self.growing = True
        self.ratio: float | None = None
        self.samples = 0
        self.cut_at: float | None = None
        self.at = now  # when ratio was last updated

    def weight(self, now: float) -> float:
        """The weight at `now`; reading it changes nothing (the picker, the metrics and the
        page all read it)."""
        t0 = self.t0
        if not self.growing:
            back = self._back_within(now)
            if back is None:
                return self.w0
            t0 = max(back, t0)  # the held ratio faded into tolerance: it grows from then
        w: float = self.w0 * 2.0 ** ((now - t0) / self.p.doubling_time)
        return 1.0 if w >= 1.0 else w

    def _settle(self, now: float) -> None:
        """Record what time alone has done by `now`: a held ratio that faded back into
        tolerance made the weight grow again from the moment it did."""
        if not self.growing:
            back = self._back_within(now)
            if back is not None:
                self.t0 = max(back, self.t0)
                self.growing = True

    def ratio_at(self, now: float) -> float | None:
        """The smoothed ratio, its distance from 1 halved every doubling_time since the
        last sample."""
        r = self.ratio
        if r is None or now <= self.at:
            return r
        fade: float = 0.5 ** ((now - self.at) / self.p.doubling_time)
        return 1.0 + (r - 1.0) * fade

    def within_tolerance(self, now: float | None = None) -> bool:
        r = self.ratio if now is None else self.ratio_at(now)
        return r is None or r <= 1.0 + self.p.tolerance

    def _back_within(self, now: float) -> float | None:
        """When the fading ratio came within tolerance, if it has by now."""
        r = self.ratio
        tol = self.p.tolerance
        if r is None or r <= 1.0 + tol:
            return self.at
        back = self.at + self.p.doubling_time * math.log2((r - 1.0) / tol)
        return back if back <= now else None

    def observe(self, ratio: float, now: float) -> None:
        """Feed one latency ratio (endpoint / fleet, same request shape)."""
        self._settle(now)
        a = self.p.ewma_alpha
        prior = self.ratio_at(now)
        self.ratio = ratio if prior is None else a * ratio + (1.0 - a) * prior
        self.at = max(self.at, now)
        self.samples += 1
        if self.within_tolerance():
            if not self.growing:
                self.t0 = now
                self.growing = True
            return
        w = self.weight(now)
        if self.cut_at is None or now - self.cut_at >= self.p.doubling_time:
            w *= self.p.shrink  # at most one cut per doubling_time; otherwise hold
            self.cut_at = now
        self.w0 = max(self.p.min_weight, w)
        self.t0 = now
        self.growing = False

    def done(self, now: float) -> str | None:
        """Why the ramp is over ('converged' or 'max ramp time'), or None if it is not."""
        if self.weight(now) >= 1.0 and self.within_tolerance(now):
            return "converged"
        if now - self.started >= self.p.max_ramp_time:
            return "max ramp time"
        return None


class SlowStart:
    """Envoy's `slow_start_config` law, time only; here for side-by-side comparison."""

    __slots__ = ("p", "started")

    def __init__(self, params: SlowStartParams, now: float) -> None:
        self.p = params
        self.started = now

    def weight(self, now: float) -> float:
        f = (now - self.started) / self.p.window
        if f >= 1.0:
            return 1.0
        w: float = max(f, 0.0) ** (1.0 / self.p.aggression)
        return max(self.p.min_weight_percent, w)

    def observe(self, ratio: float, now: float) -> None:
        """Time-based slow start ignores latency."""

    def done(self, now: float) -> str | None:
        return "window passed" if now - self.started >= self.p.window else None


Ramp = LatencyRamp | SlowStart
