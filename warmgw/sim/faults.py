"""Fault injection settings of a simulated replica (pure data)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Faults:
    """Faults applied to inference requests (POST /v1/...).

    error_rate: fraction of requests answered 500 (OpenAI error shape), drawn from the
        replica's seeded rng.
    hang: accept requests, never send a byte until hang is cleared (they then proceed) or
        the client goes away.
    slow_drip: seconds between SSE chunks (replaces the per-token latency) when > 0.
    drop_mid_stream: after this many SSE chunks abort the TCP connection (no final chunk,
        no [DONE]); non-streaming requests are aborted before the response is sent.
    unhealthy: GET /health and /ping answer 503 while inference keeps working.

    Hung requests are counted in neither num_requests_running nor num_requests_waiting.
    """

    error_rate: float = 0.0
    hang: bool = False
    slow_drip: float = 0.0
    drop_mid_stream: int | None = None
    unhealthy: bool = False

    def __post_init__(self) -> None:
        if not _is_number(self.error_rate) or not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"Faults.error_rate must be in [0, 1], got {self.error_rate!r}")
        if not isinstance(self.hang, bool):
            raise ValueError(f"Faults.hang must be a boolean, got {self.hang!r}")
        if not _is_number(self.slow_drip) or not self.slow_drip >= 0:
            raise ValueError(f"Faults.slow_drip must be >= 0, got {self.slow_drip!r}")
        d = self.drop_mid_stream
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 0):
            raise ValueError(f"Faults.drop_mid_stream must be null or an int >= 0, got {d!r}")
        if not isinstance(self.unhealthy, bool):
            raise ValueError(f"Faults.unhealthy must be a boolean, got {self.unhealthy!r}")

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with ``changes`` applied; ValueError names an unknown key or bad value."""
        known = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in known:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
