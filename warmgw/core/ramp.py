"""Weight laws for an endpoint that has just joined: warmgw's latency ramp and Envoy's
time-based slow start (the baseline it is compared with).

Latency ramp. An endpoint starts at `initial_weight`. While the EWMA of its latency ratio
r (its latency over the fleet's for requests of the same shape, see stats.py) stays within
tolerance, r <= 1 + tolerance, its weight doubles every `doubling_time` seconds:

    w(t) = min(1, w0 * 2 ** ((t - t0) / doubling_time))

When r rises above 1 + tolerance, the weight is cut: w0 = max(min_weight, w(t) * shrink),
t0 = t, and it holds there until a ratio within tolerance is seen again (at most one cut
per doubling_time, so one burst of slow requests does not drive it to the floor). The
endpoint is promoted to ready once w(t) reaches 1 with r within tolerance, or when
`max_ramp_time` has passed since the ramp began, whatever the weight.

Envoy slow start (baseline). Time only, whatever the endpoint's latency:

    w(t) = max(min_weight_percent, ((t - t_start) / window) ** (1 / aggression))

Weights are functions of the current time, evaluated at pick time, so nothing goes stale.
"""

from __future__ import annotations

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

    __slots__ = ("cut_at", "growing", "p", "ratio", "samples", "started", "t0", "w0")

    def __init__(self, params: RampParams, now: float) -> None:
        self.p = params
        self.started = now
        self.w0 = params.initial_weight
        self.t0 = now
        self.growing = True
        self.ratio: float | None = None
        self.samples = 0
        self.cut_at: float | None = None

    def weight(self, now: float) -> float:
        if not self.growing:
            return self.w0
        w: float = self.w0 * 2.0 ** ((now - self.t0) / self.p.doubling_time)
        return 1.0 if w >= 1.0 else w

    def within_tolerance(self) -> bool:
        return self.ratio is None or self.ratio <= 1.0 + self.p.tolerance

    def observe(self, ratio: float, now: float) -> None:
        """Feed one latency ratio (endpoint / fleet, same request shape)."""
        a = self.p.ewma_alpha
        self.ratio = ratio if self.ratio is None else a * ratio + (1.0 - a) * self.ratio
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
        if self.weight(now) >= 1.0 and self.within_tolerance():
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
