"""Weight laws: warmgw's latency ramp and Envoy's time-based slow start."""

from __future__ import annotations

import math

import pytest

from warmgw.core.ramp import LatencyRamp, RampParams, SlowStart, SlowStartParams

T0 = 1000.0  # ramps start at an arbitrary clock reading, not at 0
# EWMA off (alpha 1): each observed ratio is the ratio the rules see.
RAW = RampParams(
    initial_weight=0.05, min_weight=0.02, doubling_time=2.0, tolerance=0.25, shrink=0.5,
    max_ramp_time=120.0, ewma_alpha=1.0,
)


# -- latency ramp: growth ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "weight"),
    [
        (0.0, 0.05),
        (1.0, 0.05 * 2**0.5),
        (2.0, 0.1),
        (4.0, 0.2),
        (6.0, 0.4),
        (8.0, 0.8),
        (8.6, 0.05 * 2**4.3),
        (9.0, 1.0),  # 0.05 * 2**4.5 > 1: capped
        (60.0, 1.0),
    ],
)
def test_weight_doubles_every_doubling_time_up_to_one(t: float, weight: float) -> None:
    ramp = LatencyRamp(RampParams(), T0)
    assert ramp.weight(T0 + t) == pytest.approx(weight)


def test_ratios_within_tolerance_do_not_slow_growth() -> None:
    ramp = LatencyRamp(RAW, T0)
    for i in range(8):
        ramp.observe(1.0 + 0.25 * (i % 2), T0 + 0.5 * i)  # 1.0, 1.25 (the edge), ...
    assert ramp.weight(T0 + 4.0) == pytest.approx(0.2)


# -- latency ramp: shrink, hold, re-growth --------------------------------------------------

# (time since start, ratio observed then or None, expected weight right after)
# A ratio's distance from 1 halves every doubling_time (2 s) after it was seen: 1.3 seen at
# 4 s is back within 1.25 at FADE = 4 + 2 log2(0.3 / 0.25) = 4.53 s.
FADE = 4.0 + 2.0 * math.log2(0.3 / 0.25)
W5 = 0.1 * 2 ** ((5.0 - FADE) / 2.0)  # grown from 0.1 since FADE
SHRINK_HOLD_REGROW = [
    (4.0, 1.0, 0.2),  # growing: 0.05 * 2**2
    (4.0, 1.3, 0.1),  # above 1.25: cut by half, and held
    (4.5, None, 0.1),  # held while the slow ratio is fresh
    (5.0, None, W5),  # it has faded into tolerance: growing again from FADE
    (5.0, 2.0, W5),  # slow again, but a cut was made less than doubling_time ago: held
    (5.9, 3.0, W5),
    (6.0, 2.0, W5 / 2),  # one doubling_time after the first cut: cut again
    (7.0, None, W5 / 2),  # 2.0 seen 1 s ago is 1.71 now: still held
    (7.0, 1.25, W5 / 2),  # within tolerance again (edge inclusive): grows from here
    (8.0, None, W5 / 2 * 2**0.5),
    (9.0, None, W5),
    (11.0, None, W5 * 2),
]


def test_shrink_hold_and_regrowth() -> None:
    ramp = LatencyRamp(RAW, T0)
    for t, ratio, weight in SHRINK_HOLD_REGROW:
        if ratio is not None:
            ramp.observe(ratio, T0 + t)
        assert ramp.weight(T0 + t) == pytest.approx(weight), (t, ratio)


def test_cut_from_full_weight_halves_it() -> None:
    ramp = LatencyRamp(RAW, T0)
    ramp.observe(2.0, T0 + 30.0)
    assert ramp.weight(T0 + 30.0) == pytest.approx(0.5)


def test_repeated_cuts_stop_at_min_weight() -> None:
    ramp = LatencyRamp(RAW, T0)
    weights = []
    for i in range(5):
        t = T0 + 2.0 * i  # one cut allowed per doubling_time
        ramp.observe(5.0, t)
        weights.append(ramp.weight(t))
    assert weights == pytest.approx([0.025, 0.02, 0.02, 0.02, 0.02])


def test_ratio_is_smoothed_so_one_slow_request_does_not_cut() -> None:
    ramp = LatencyRamp(RampParams(ewma_alpha=0.3), T0)
    for i in range(5):
        ramp.observe(1.0, T0 + i)
    ramp.observe(1.5, T0 + 5.0)  # EWMA 0.3 * 1.5 + 0.7 * 1.0 = 1.15: within 1.25
    assert ramp.ratio == pytest.approx(1.15)
    assert ramp.weight(T0 + 6.0) == pytest.approx(0.4)
    ramp.observe(2.0, T0 + 6.0)  # EWMA 1.405: out of tolerance
    assert ramp.weight(T0 + 6.0) == pytest.approx(0.2)


def test_ratio_oscillating_across_tolerance_is_cut_at_most_once_per_doubling_time() -> None:
    """A replica whose latency hovers around the tolerance line (ratios alternately 1.0 and
    2.0, every 0.1 s) must not be driven to the floor within one doubling_time."""
    ramp = LatencyRamp(RAW, T0)
    ramp.observe(1.0, T0 + 4.0)
    before = ramp.weight(T0 + 4.0)  # 0.2
    t = 4.0
    for i in range(19):  # 1.9 s < doubling_time
        t = 4.0 + 0.1 * i
        ramp.observe(2.0 if i % 2 == 0 else 1.0, T0 + t)
    # one cut at most: never below before * shrink
    assert ramp.weight(T0 + t) >= before * RAW.shrink


# -- latency ramp: done() ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratios", "at", "why"),
    [
        ([], 0.0, None),
        ([], 8.0, None),  # weight 0.8
        ([], 8.65, "converged"),  # weight reached 1 and no bad ratio seen
        ([(1.0, 2.0), (1.1, 8.0)], 8.65, "converged"),
        ([(1.0, 2.0), (2.0, 8.0)], 8.65, None),  # cut at 8 s: back to 0.4, held
        # one slow ratio (2.0 at 1 s): cut from 0.0707 to 0.0354 and held until it fades
        # (5 s), then grown back: 0.0354 * 2 ** ((t - 5) / 2) reaches 1 at 14.64 s
        ([(2.0, 1.0)], 4.9, None),
        ([(2.0, 1.0)], 14.6, None),
        ([(2.0, 1.0)], 14.7, "converged"),
        # slow whenever it gets a request: held, then promoted whatever the weight
        ([(2.0, float(t)) for t in range(1, 120, 3)], 119.9, None),
        ([(2.0, float(t)) for t in range(1, 120, 3)], 120.0, "max ramp time"),
        ([(2.0, 1.0)], 500.0, "converged"),
    ],
)
def test_done_reasons(ratios: list[tuple[float, float]], at: float, why: str | None) -> None:
    ramp = LatencyRamp(RAW, T0)
    for ratio, t in ratios:
        ramp.observe(ratio, T0 + t)
    assert ramp.done(T0 + at) == why


# -- Envoy slow start ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggression", "floor", "fraction", "weight"),
    [
        (1.0, 0.1, 0.0, 0.1),  # floor
        (1.0, 0.1, 0.05, 0.1),  # floor
        (1.0, 0.1, 0.1, 0.1),
        (1.0, 0.1, 0.25, 0.25),  # linear
        (1.0, 0.1, 0.5, 0.5),
        (1.0, 0.1, 0.9, 0.9),
        (1.0, 0.1, 1.0, 1.0),
        (1.0, 0.1, 3.0, 1.0),
        (2.0, 0.1, 0.0025, 0.1),  # sqrt(0.0025) = 0.05: floor
        (2.0, 0.1, 0.04, 0.2),  # sqrt: faster at first
        (2.0, 0.1, 0.25, 0.5),
        (2.0, 0.1, 0.81, 0.9),
        (2.0, 0.1, 1.0, 1.0),
        (1.0, 0.3, 0.25, 0.3),  # a higher floor wins while time is short
        (1.0, 0.3, 0.5, 0.5),
        (2.0, 0.0, 0.0, 0.0),  # no floor: nothing at first
    ],
)
def test_slow_start_weight_at_fractions_of_the_window(
    aggression: float, floor: float, fraction: float, weight: float
) -> None:
    p = SlowStartParams(window=30.0, aggression=aggression, min_weight_percent=floor)
    ss = SlowStart(p, T0)
    assert ss.weight(T0 + fraction * 30.0) == pytest.approx(weight)


def test_slow_start_ignores_latency() -> None:
    ss = SlowStart(SlowStartParams(window=30.0), T0)
    ss.observe(50.0, T0 + 10.0)
    assert ss.weight(T0 + 15.0) == pytest.approx(0.5)


@pytest.mark.parametrize(("at", "why"), [(0.0, None), (29.9, None), (30.0, "window passed")])
def test_slow_start_done_when_window_passed(at: float, why: str | None) -> None:
    assert SlowStart(SlowStartParams(window=30.0), T0).done(T0 + at) == why
