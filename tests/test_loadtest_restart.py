"""The `restart` scenario's parts that need no processes: its spec (signals need a process
per replica) and how failures are counted from each kill or term on."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.spec import SpecError, load, merge, parse
from loadtest.summary import restart_failures


def test_the_restart_scenario_kills_then_terms_each_replica() -> None:
    s = load("restart")
    assert s.fleet.processes == "each"
    assert [(e.signal, e.replicas) for e in s.events] == [
        ("kill", ("r0", "r1", "r2")), ("term", ("r0", "r1", "r2"))]
    assert [e.label() for e in s.events] == ["kill r0,r1,r2", "term r0,r1,r2"]


@pytest.mark.parametrize(("change", "message"), [
    ({"fleet": {"processes": "one"}}, "needs fleet.processes: each"),
    ({"fleet": {"processes": "many"}}, "fleet.processes: expected one or each"),
])
def test_a_signal_needs_a_process_per_replica(change: dict[str, Any], message: str) -> None:
    raw = merge(load("restart").raw, change)
    with pytest.raises(SpecError, match=message):
        parse(raw)


def test_a_signal_is_for_restarts_only() -> None:
    raw = dict(load("restart").raw)
    raw["events"] = [{"at": 0, "action": "remove", "replicas": ["r0"], "signal": "kill"}]
    with pytest.raises(SpecError, match="for a restart only"):
        parse(raw)


def _s(t: float, ok: bool, stream: bool, status: int = 200, lat: float = 0.1
       ) -> dict[str, Any]:
    return {"t": t, "lat": lat, "ok": ok, "stream": stream, "status": status}


def test_failures_belong_to_the_last_signal_before_the_request_ended() -> None:
    events = [{"t": 1.0, "what": "kill r0"}, {"t": 2.0, "what": "r0 routable"},
              {"t": 3.0, "what": "kill r1"}, {"t": 5.0, "what": "term r0"}]
    samples = [
        _s(0.5, False, False, 502),  # before any signal: not counted
        _s(0.8, False, True, lat=0.3),  # in flight at the kill: a stream cut after it began
        _s(2.5, False, False, 502),  # a failed non-streamed request
        _s(3.5, True, True),
        _s(4.0, False, True, 502),  # a stream that never began
        _s(5.5, True, False),
        _s(6.0, False, True),
        _s(2.9, True, False, lat=0.05),  # ended before the kill of r1: the first kill's
    ]
    assert restart_failures(samples, events) == {
        "kill": {"requests": 5, "plain": 1, "cut": 1, "streams": 1},
        "term": {"requests": 2, "plain": 0, "cut": 1, "streams": 0},
    }
    assert restart_failures(samples, [{"t": 1.0, "what": "restart r0"}]) == {}
