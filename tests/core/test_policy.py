"""The traffic policy: which pool gets what share of new requests."""

from __future__ import annotations

import re

import pytest

from warmgw.core.policy import TrafficPolicy


@pytest.mark.parametrize(
    ("shares", "kept", "active"),
    [
        ({"blue": 1.0}, {"blue": 1.0}, "blue"),
        ({"blue": 0.9, "green": 0.1}, {"blue": 0.9, "green": 0.1}, "blue"),
        ({"blue": 0.2, "green": 0.8}, {"blue": 0.2, "green": 0.8}, "green"),
        ({"blue": 0.0, "green": 1.0}, {"green": 1.0}, "green"),  # zero shares dropped
        ({"blue": 3, "green": 1}, {"blue": 3.0, "green": 1.0}, "blue"),  # ints welcome
    ],
)
def test_of_keeps_positive_shares(
    shares: dict[str, float], kept: dict[str, float], active: str
) -> None:
    p = TrafficPolicy.of(shares)
    assert p.as_dict() == kept
    assert p.active == active
    for pool, s in shares.items():
        assert p.share(pool) == float(s)
    assert p.share("never-named") == 0.0


@pytest.mark.parametrize(
    ("shares", "message"),
    [
        ({"blue": -0.1}, "share of pool 'blue' must be >= 0, got -0.1"),
        ({"blue": 1.0, "green": float("nan")}, "share of pool 'green' must be >= 0, got nan"),
        ({"blue": 0.0}, "at least one pool with a share > 0"),
        ({}, "at least one pool with a share > 0"),
    ],
)
def test_of_rejects_bad_shares_naming_the_pool(shares: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TrafficPolicy.of(shares)


def test_single_and_equality() -> None:
    p = TrafficPolicy.single("green")
    assert p.as_dict() == {"green": 1.0}
    assert p.active == "green"
    # the same shares in any order make the same (hashable) policy
    assert TrafficPolicy.of({"a": 1.0, "b": 2.0}) == TrafficPolicy.of({"b": 2.0, "a": 1.0})
    assert len({TrafficPolicy.of({"a": 1.0, "b": 2.0}), TrafficPolicy.of({"b": 2, "a": 1})}) == 1
