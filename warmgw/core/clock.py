"""Time, injected: logic asks a Clock, tests advance a FakeClock instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class MonotonicClock:
    """The real clock: seconds from an arbitrary origin, never going backwards."""

    __slots__ = ()

    now = staticmethod(time.monotonic)  # called as is: no Python frame (the request path)


class FakeClock:
    """A clock that moves only when a test says so."""

    __slots__ = ("t",)

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        self.t += seconds
