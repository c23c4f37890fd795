"""The traffic policy: which pool (colour) gets what share of new requests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """Shares per pool; pools not named get nothing. Shares are relative weights."""

    shares: tuple[tuple[str, float], ...]

    @classmethod
    def single(cls, pool: str) -> TrafficPolicy:
        return cls(((pool, 1.0),))

    @classmethod
    def of(cls, shares: Mapping[str, float]) -> TrafficPolicy:
        for pool, s in shares.items():
            if not s >= 0.0:
                raise ValueError(f"share of pool {pool!r} must be >= 0, got {s!r}")
        kept = tuple(sorted((p, float(s)) for p, s in shares.items() if s > 0.0))
        if not kept:
            raise ValueError("a traffic policy needs at least one pool with a share > 0")
        return cls(kept)

    def share(self, pool: str) -> float:
        for p, s in self.shares:
            if p == pool:
                return s
        return 0.0

    @property
    def active(self) -> str:
        """The pool with the largest share (the one a cutover names)."""
        return max(self.shares, key=lambda ps: ps[1])[0]

    def as_dict(self) -> dict[str, float]:
        return dict(self.shares)
