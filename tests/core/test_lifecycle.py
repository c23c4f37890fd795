"""The lifecycle table, checked against an independent copy of the documented rules."""

from __future__ import annotations

import itertools

import pytest

from warmgw.core.lifecycle import ROUTABLE, TRANSITIONS, IllegalTransition, State, check

S = State

# Written out from the module docstring and DESIGN.md, not copied from TRANSITIONS, so a
# change to the table shows up here as a failure.
LEGAL: set[tuple[State, State]] = {
    (S.DISCOVERED, S.PROBING),
    (S.DISCOVERED, S.DRAINING),  # removed by discovery before the first probe
    (S.PROBING, S.WARMING),
    (S.PROBING, S.RAMPING),  # slow-start baseline skips warmup
    (S.PROBING, S.READY),  # round-robin baseline skips warmup and ramp
    (S.PROBING, S.EJECTED),
    (S.PROBING, S.DRAINING),
    (S.WARMING, S.RAMPING),
    (S.WARMING, S.READY),
    (S.WARMING, S.EJECTED),
    (S.WARMING, S.DRAINING),
    (S.RAMPING, S.READY),
    (S.RAMPING, S.EJECTED),
    (S.RAMPING, S.DRAINING),
    (S.RAMPING, S.WARMING),  # operator's rewarm
    (S.READY, S.EJECTED),
    (S.READY, S.DRAINING),
    (S.READY, S.WARMING),  # operator's rewarm
    (S.DRAINING, S.GONE),
    (S.DRAINING, S.PROBING),  # undrain
    (S.EJECTED, S.PROBING),  # backoff over
    (S.EJECTED, S.DRAINING),
}

ILLEGAL = sorted(set(itertools.product(State, State)) - LEGAL)

# The moves a reader would most likely get wrong, named so a failure reads well.
NOTABLE_ILLEGAL = [
    (S.DISCOVERED, S.READY),  # never routable without a probe
    (S.DISCOVERED, S.WARMING),
    (S.PROBING, S.GONE),  # must drain first
    (S.WARMING, S.PROBING),
    (S.READY, S.RAMPING),  # no way back down the ramp but a rewarm
    (S.READY, S.PROBING),
    (S.READY, S.GONE),  # in-flight requests finish first
    (S.EJECTED, S.READY),  # an ejected replica proves itself again
    (S.EJECTED, S.WARMING),
    (S.DRAINING, S.READY),
    (S.GONE, S.PROBING),  # terminal
    (S.READY, S.READY),
]


@pytest.mark.parametrize(("frm", "to"), sorted(LEGAL))
def test_legal_move_is_accepted(frm: State, to: State) -> None:
    check("r0", frm, to)


@pytest.mark.parametrize(("frm", "to"), ILLEGAL)
def test_illegal_move_raises_naming_both_states(frm: State, to: State) -> None:
    with pytest.raises(IllegalTransition) as info:
        check("r7", frm, to)
    msg = str(info.value)
    assert f"{frm.value} -> {to.value}" in msg
    assert "r7" in msg
    assert (info.value.frm, info.value.to) == (frm, to)


@pytest.mark.parametrize(("frm", "to"), NOTABLE_ILLEGAL)
def test_notable_illegal_moves_raise_a_value_error(frm: State, to: State) -> None:
    assert (frm, to) not in LEGAL
    with pytest.raises(ValueError, match="illegal transition"):
        check("r1", frm, to)


def test_table_covers_every_state_and_gone_is_terminal() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[S.GONE] == frozenset()


def test_from_every_state_a_replica_can_reach_gone() -> None:
    """No dead ends: from anywhere a replica can be drained and so eventually removed."""
    for start in State:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert S.GONE in seen, start


def test_only_ramping_and_ready_are_routable() -> None:
    assert frozenset({S.RAMPING, S.READY}) == ROUTABLE
