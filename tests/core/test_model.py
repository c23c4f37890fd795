"""Endpoints, groups and snapshots: the plain data the picker reads."""

from __future__ import annotations

import dataclasses

import pytest

from warmgw.core.lifecycle import State
from warmgw.core.model import Endpoint, EndpointSpec, Group, Snapshot
from warmgw.core.ramp import LatencyRamp, RampParams


@pytest.mark.parametrize(
    ("spec", "url", "models", "pool"),
    [
        (EndpointSpec("r0", "http://a:8000"), "http://a:8000", frozenset(), "default"),
        (EndpointSpec("r0", "http://a:8000/"), "http://a:8000", frozenset(), "default"),
        (EndpointSpec("r0", "http://a:8000//", "green", "m"), "http://a:8000", {"m"}, "green"),
    ],
)
def test_new_endpoint(spec: EndpointSpec, url: str, models: frozenset[str], pool: str) -> None:
    ep = Endpoint(spec, 5.0)
    assert (ep.name, ep.url, ep.models, ep.pool) == ("r0", url, models, pool)
    assert (ep.state, ep.since, ep.inflight, ep.ramp) == (State.DISCOVERED, 5.0, 0, None)


def test_weight_is_one_without_a_ramp_and_the_ramp_s_otherwise() -> None:
    ep = Endpoint(EndpointSpec("r0", "http://a"), 0.0)
    assert ep.weight(123.0) == 1.0
    ep.ramp = LatencyRamp(RampParams(initial_weight=0.25, doubling_time=1.0), 100.0)
    assert ep.weight(100.0) == pytest.approx(0.25)
    assert ep.weight(101.0) == pytest.approx(0.5)


def test_group_is_uniform_only_when_no_endpoint_ramps() -> None:
    a = Endpoint(EndpointSpec("a", "http://a"), 0.0)
    b = Endpoint(EndpointSpec("b", "http://b"), 0.0)
    assert Group("blue", 1.0, (a, b)).uniform
    b.ramp = LatencyRamp(RampParams(), 0.0)
    assert not Group("blue", 1.0, (a, b)).uniform


def test_spec_and_snapshot_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EndpointSpec("a", "http://a").url = "http://b"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Snapshot(1).version = 2  # type: ignore[misc]
