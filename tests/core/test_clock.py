"""Injected time: the fake clock tests advance, and the real one."""

from __future__ import annotations

import pytest

from warmgw.core.clock import Clock, FakeClock, MonotonicClock


def test_fake_clock_moves_only_when_told() -> None:
    c = FakeClock()
    start = c.now()
    assert c.now() == start
    c.advance(2.5)
    c.advance(0.0)
    assert c.now() == start + 2.5


def test_fake_clock_cannot_go_back() -> None:
    c = FakeClock(10.0)
    with pytest.raises(ValueError, match=r"-1"):
        c.advance(-1.0)
    assert c.now() == 10.0


def test_monotonic_clock_never_goes_back() -> None:
    c: Clock = MonotonicClock()
    readings = [c.now() for _ in range(1000)]
    assert readings == sorted(readings)
