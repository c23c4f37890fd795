"""Events as data: a publisher appends to each subscriber's inbox; each subscriber takes
its events later, in order, outside the call that published them.

The registry publishes its transitions here. Their consumers drain an inbox from their own
task, so a failure observed inside a request handler never runs their work in the middle of
that request: warmgw.replicas is the one consumer of the per-replica reactions (it hands
each transition to the supervisor, the proxy and Kubernetes in an order set in one place),
the demo's narration has its own inbox.

`wake` is how an edge learns that an inbox has something: it is called as an item arrives
and must only schedule (set an asyncio.Event), never act.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    __slots__ = ("items", "wake")

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self.wake: Callable[[], None] | None = None

    def take(self) -> list[T]:
        """Everything that arrived since the last take, oldest first."""
        items = list(self.items)
        self.items.clear()
        return items

    def __len__(self) -> int:
        return len(self.items)


class Feed(Generic[T]):
    __slots__ = ("_inboxes",)

    def __init__(self) -> None:
        self._inboxes: list[Inbox[T]] = []

    def subscribe(self) -> Inbox[T]:
        inbox: Inbox[T] = Inbox()
        self._inboxes.append(inbox)
        return inbox

    def unsubscribe(self, inbox: Inbox[T]) -> None:
        if inbox in self._inboxes:
            self._inboxes.remove(inbox)

    def publish(self, item: T) -> None:
        for inbox in self._inboxes:
            inbox.items.append(item)
            wake = inbox.wake
            if wake is not None:
                wake()
