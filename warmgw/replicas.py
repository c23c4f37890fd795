"""Per-replica edge state, one record per replica, and the one consumer of the registry's
transitions.

A record is created when the registry reports a replica discovered and dropped when it
reports it gone, so nothing outlives its replica: the task that probes or warms it, its
health-check counts, the vLLM gauges last read from it, its warmup Lease and readiness-gate
state. Transitions are taken from the registry's feed by this owner's task, outside the
call that caused them, and handed to the owners that react, in a fixed order: first each
`Reaction` in the order given at composition (the supervisor: probes, warmups; the proxy:
pooled connections of a gone replica; Kubernetes: the readiness gate), then, for a gone
replica, the record is closed and dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from warmgw.core.lifecycle import State
from warmgw.core.registry import Registry, Transition
from warmgw.reactor import consume


class Replica:
    """What the edges keep about one replica while it exists."""

    __slots__ = ("checks", "engine", "gate_warm", "health_failures", "lease", "name", "task",
                 "warmed_here")

    def __init__(self, name: str) -> None:
        self.name = name
        self.task: asyncio.Task[None] | None = None  # its probe or warmup (supervisor)
        self.health_failures = 0  # failed health checks in a row
        self.checks = 0  # good health checks since its start time was last read
        self.engine: dict[str, float] = {}  # vLLM queue and KV gauges, last read
        self.lease: asyncio.Task[None] | None = None  # renews its warmup Lease (Kubernetes)
        self.warmed_here = False  # this gateway's own warmup let it ramp (last time)
        self.gate_warm = False  # this gateway set its warmgw.io/warmed condition True

    def close(self) -> None:
        for task in (self.task, self.lease):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self.task = self.lease = None

    def __repr__(self) -> str:
        return f"Replica({self.name!r})"


class Reaction(Protocol):
    def react(self, t: Transition, rec: Replica) -> None: ...


class Replicas:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.records: dict[str, Replica] = {}
        self.reactions: list[Reaction] = []
        self._inbox = registry.subscribe()
        self._task: asyncio.Task[None] | None = None

    def react_with(self, reactions: Sequence[Reaction]) -> None:
        """The owners that react to transitions, in the order they are told (set once, at
        composition)."""
        self.reactions = list(reactions)

    def get(self, name: str) -> Replica | None:
        return self.records.get(name)

    def __len__(self) -> int:
        return len(self.records)

    async def start(self) -> None:
        self._task = asyncio.create_task(consume(self._inbox, self.handle),
                                         name="warmgw-replicas")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for rec in self.records.values():
            rec.close()

    def handle(self, t: Transition) -> None:
        rec = self.records.get(t.name)
        if t.frm is State.DISCOVERED or rec is None:
            if rec is not None:
                rec.close()  # an earlier replica of that name, still not dropped
            rec = self.records[t.name] = Replica(t.name)
        for r in self.reactions:
            r.react(t, rec)
        if t.to is State.GONE:
            rec.close()
            if self.records.get(t.name) is rec:
                del self.records[t.name]
