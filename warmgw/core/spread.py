"""Spreading periodic work over its interval: each name at its own fixed offset.

Health checks of 1,000 replicas all started at the same instant every interval make one
burst of 1,000 connections and one long event-loop step, then nothing. Instead each
replica gets an offset within the interval from a hash of its name (stable across
restarts and gateway replicas, independent of how many others there are), and the
interval is walked in slices: a slice starts the checks whose offset falls in it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

SLICE_S = 0.02  # the walk's step: 50 slices a second at most


def phase(name: str) -> float:
    """Where in the interval the name's turn comes, as a share of it: in [0, 1)."""
    return zlib.crc32(name.encode()) / 2**32


def slice_count(interval: float, slice_s: float = SLICE_S) -> int:
    return max(1, math.ceil(interval / slice_s))


def slices(names: Iterable[str], count: int) -> list[list[str]]:
    """The names grouped by the slice their phase falls in, `count` slices in order."""
    out: list[list[str]] = [[] for _ in range(count)]
    for name in names:
        out[min(count - 1, int(phase(name) * count))].append(name)
    return out
