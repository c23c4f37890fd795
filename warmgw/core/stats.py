"""Size-normalised latency: requests are compared only with requests of the same shape.

A request's latency key is core.shapes.latency_key: (kind, stream or not, prompt-size bucket
in tokens, max_tokens bucket), buckets being powers of two.

The fleet keeps an EWMA of the latency of each shape over its ready
endpoints (time to first byte for streams, the whole request otherwise); an endpoint's
latency ratio for one request is its latency over the fleet's for that shape. A ratio of 1
means "as fast as the fleet for this kind of request", whatever its size.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FleetParams:
    alpha: float = 0.05
    min_samples: int = 10


class Ewma:
    __slots__ = ("n", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.n = 0

    def add(self, x: float, alpha: float) -> None:
        self.n += 1
        if self.n == 1:
            self.value = x
        else:
            # the first samples weigh as a plain mean, later ones as an EWMA
            a = max(alpha, 1.0 / self.n)
            self.value += a * (x - self.value)


class FleetBaseline:
    """The fleet's steady-state latency per model and request shape (ready endpoints only)."""

    __slots__ = ("_by_model", "p")

    def __init__(self, params: FleetParams) -> None:
        self.p = params
        self._by_model: dict[str, dict[int, Ewma]] = {}

    def update(self, model: str, key: int, seconds: float) -> None:
        self.observe(model, key, seconds)

    def observe(self, model: str, key: int, seconds: float) -> float | None:
        """ratio() and then update() (as both would, with one lookup of the shape)."""
        shapes = self._by_model.get(model)
        if shapes is None:
            shapes = self._by_model[model] = {}
        e = shapes.get(key)
        if e is None:
            e = shapes[key] = Ewma()
        p = self.p
        n = e.n
        value = e.value
        ratio = None if n < p.min_samples or value <= 0.0 else seconds / value
        n = e.n = n + 1
        if n == 1:
            e.value = seconds
        else:
            alpha = p.alpha
            e.value = value + (alpha if n * alpha >= 1.0 else 1.0 / n) * (seconds - value)
        return ratio

    def ratio(self, model: str, key: int, seconds: float) -> float | None:
        """seconds over the fleet's latency for this shape, None while the fleet has too few."""
        shapes = self._by_model.get(model)
        if shapes is None:
            return None
        e = shapes.get(key)
        if e is None or e.n < self.p.min_samples or e.value <= 0.0:
            return None
        return seconds / e.value

    def forget(self, model: str) -> None:
        self._by_model.pop(model, None)
