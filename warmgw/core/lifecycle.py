"""The endpoint lifecycle: one enum, one transition table, an exception on an illegal move.

    discovered -> probing -> warming -> ramping -> ready -> draining -> gone
                     |          |          |          |
                     +----------+----------+----------+--> ejected --(backoff)--> probing
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    DISCOVERED = "discovered"
    PROBING = "probing"
    WARMING = "warming"
    RAMPING = "ramping"
    READY = "ready"
    DRAINING = "draining"
    EJECTED = "ejected"
    GONE = "gone"


S = State

# Who may follow whom. PROBING -> RAMPING/READY exist for the baselines that skip warmup
# (round-robin and time-based slow start); RAMPING/READY -> WARMING is an operator's rewarm;
# DRAINING -> PROBING is an undrain (the replica proves itself again, cheaply if still warm).
TRANSITIONS: dict[State, frozenset[State]] = {
    S.DISCOVERED: frozenset({S.PROBING, S.DRAINING}),
    S.PROBING: frozenset({S.WARMING, S.RAMPING, S.READY, S.EJECTED, S.DRAINING}),
    S.WARMING: frozenset({S.RAMPING, S.READY, S.EJECTED, S.DRAINING}),
    S.RAMPING: frozenset({S.READY, S.EJECTED, S.DRAINING, S.WARMING}),
    S.READY: frozenset({S.EJECTED, S.DRAINING, S.WARMING}),
    S.DRAINING: frozenset({S.GONE, S.PROBING}),
    S.EJECTED: frozenset({S.PROBING, S.DRAINING}),
    S.GONE: frozenset(),
}

# States whose endpoint may be picked for user traffic.
ROUTABLE: frozenset[State] = frozenset({S.RAMPING, S.READY})
# States in which the endpoint is known to have gone through warmup since it last went cold.
WARM: frozenset[State] = frozenset({S.RAMPING, S.READY})


class IllegalTransition(ValueError):
    def __init__(self, name: str, frm: State, to: State) -> None:
        super().__init__(f"endpoint {name}: illegal transition {frm} -> {to}")
        self.frm = frm
        self.to = to


def check(name: str, frm: State, to: State) -> None:
    """Raise IllegalTransition unless the table allows frm -> to."""
    if to not in TRANSITIONS[frm]:
        raise IllegalTransition(name, frm, to)
