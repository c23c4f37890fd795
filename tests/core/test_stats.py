"""Size-normalised latency: shape buckets and the fleet's per-shape baseline."""

from __future__ import annotations

import pytest

from warmgw.core.shapes import latency_key
from warmgw.core.stats import Ewma, FleetBaseline, FleetParams


def shape_key(stream: bool, prompt_tokens: int, max_tokens: int, kind: str = "completions"
              ) -> int:
    return latency_key(kind, stream, prompt_tokens, max_tokens)


# Requests in one row share a shape; requests in different rows do not. Sizes in tokens.
SAME_SHAPE = [
    [(False, 0, 16)],  # no prompt
    [(False, 1, 16), (False, 1, 31)],  # one prompt token, 16..31 tokens out
    [(True, 1, 16), (True, 1, 31)],  # the same sizes, streamed
    [(False, 64, 16), (False, 127, 16)],  # 64..127 prompt tokens
    [(False, 128, 16), (False, 255, 16)],  # 128..255
    [(False, 4096, 16), (False, 8191, 16)],  # 4 Ki..8 Ki
    [(False, 8192, 16)],
    [(False, 1, 32), (False, 1, 63)],  # 32..63 tokens out
    [(False, 1, 1)],
    [(False, 1, 0)],  # no max_tokens given
    [(False, 1, 8192), (False, 1, 16383)],
    [(True, 1 << 20, 1 << 15)],  # large values do not spill into another field
    [(False, 1 << 20, 1 << 15)],
    [(False, 1 << 20, 1 << 15, "chat")],  # chat is its own shape
]


def test_requests_share_a_key_exactly_when_they_share_a_shape() -> None:
    keys = [{shape_key(*req) for req in row} for row in SAME_SHAPE]
    for row, ks in zip(SAME_SHAPE, keys, strict=True):
        assert len(ks) == 1, row
    flat = [next(iter(ks)) for ks in keys]
    assert len(set(flat)) == len(flat), "two different shapes collide"


def test_key_grid_has_no_collisions() -> None:
    """Every (kind, stream, prompt bucket, max_tokens bucket) gets its own key."""
    seen: dict[int, tuple[str, bool, int, int]] = {}
    for kind in ("chat", "completions"):
        for stream in (False, True):
            for pb in range(0, 24):
                prompt = 0 if pb == 0 else 1 << (pb - 1)
                for mb in range(0, 20):
                    mt = 0 if mb == 0 else 1 << (mb - 1)
                    k = shape_key(stream, prompt, mt, kind)
                    assert k not in seen, (seen.get(k), (kind, stream, pb, mb))
                    seen[k] = (kind, stream, pb, mb)


@pytest.mark.parametrize(
    ("samples", "alpha", "value"),
    [
        ([2.0], 0.05, 2.0),
        ([1.0, 3.0], 0.05, 2.0),  # the first samples weigh as a plain mean
        ([1.0, 2.0, 3.0, 6.0], 0.05, 3.0),
        ([1.0, 1.0, 5.0], 0.5, 3.0),  # alpha above 1/n: EWMA (1 + 0.5 * 4)
        ([0.0] * 20 + [1.0] * 1, 0.05, 0.05),  # n=21 > 1/alpha: EWMA
    ],
)
def test_ewma_starts_as_a_mean_then_becomes_an_ewma(
    samples: list[float], alpha: float, value: float
) -> None:
    e = Ewma()
    for x in samples:
        e.add(x, alpha)
    assert e.value == pytest.approx(value)
    assert e.n == len(samples)


KEY = shape_key(False, 100, 16)
OTHER = shape_key(True, 100, 16)


@pytest.mark.parametrize(
    ("fed", "query", "ratio"),
    [
        (0, ("m", KEY, 1.0), None),  # nothing known
        (9, ("m", KEY, 1.0), None),  # one short of min_samples
        (10, ("m", KEY, 1.0), 2.0),  # baseline 0.5 s
        (10, ("m", KEY, 0.25), 0.5),
        (10, ("m", OTHER, 1.0), None),  # another shape is not compared
        (10, ("other-model", KEY, 1.0), None),  # nor another model
    ],
)
def test_fleet_ratio_needs_min_samples_of_the_same_model_and_shape(
    fed: int, query: tuple[str, int, float], ratio: float | None
) -> None:
    fleet = FleetBaseline(FleetParams(alpha=0.05, min_samples=10))
    for _ in range(fed):
        fleet.update("m", KEY, 0.5)
    got = fleet.ratio(*query)
    assert got == (None if ratio is None else pytest.approx(ratio))


def test_fleet_ratio_follows_the_fleet_and_is_one_for_a_typical_request() -> None:
    fleet = FleetBaseline(FleetParams(alpha=0.05, min_samples=3))
    for s in (0.4, 0.5, 0.6):
        fleet.update("m", KEY, s)
    assert fleet.ratio("m", KEY, 0.5) == pytest.approx(1.0)
    for _ in range(200):  # the fleet got twice as slow
        fleet.update("m", KEY, 1.0)
    assert fleet.ratio("m", KEY, 1.0) == pytest.approx(1.0, abs=1e-3)


def test_zero_baseline_gives_no_ratio() -> None:
    fleet = FleetBaseline(FleetParams(min_samples=1))
    fleet.update("m", KEY, 0.0)
    assert fleet.ratio("m", KEY, 1.0) is None


def test_forget_drops_one_model_only() -> None:
    fleet = FleetBaseline(FleetParams(min_samples=1))
    fleet.update("a", KEY, 1.0)
    fleet.update("b", KEY, 1.0)
    fleet.forget("a")
    fleet.forget("never-seen")
    assert fleet.ratio("a", KEY, 1.0) is None
    assert fleet.ratio("b", KEY, 1.0) == pytest.approx(1.0)
