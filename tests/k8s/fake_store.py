"""The fake's etcd: objects, one resourceVersion counter, a bounded event history, watchers.

Everything here is synchronous, so each write and its fan-out to watchers is atomic on the
event loop; the HTTP layer (fake_apiserver) only reads and writes through it.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections import deque
from dataclasses import dataclass, field

from .fake_kinds import JSON, Kind, already_exists, expired, fmt_time, not_found, now
from .fake_selectors import FieldSelector, LabelSelector


@dataclass(frozen=True)
class Change:
    """One write: `old` is None for a creation, `new` is None for a removal."""

    rv: int
    kind: Kind
    namespace: str
    old: JSON | None
    new: JSON | None


@dataclass(frozen=True)
class Bookmark:
    rv: int


@dataclass(frozen=True)
class Abort:
    """Drop the connection without ending the chunked body (an outage, not a timeout)."""


@dataclass(eq=False)
class Watcher:
    kind: Kind
    namespace: str | None  # None: every namespace
    labels: LabelSelector
    fields: FieldSelector
    bookmarks: bool
    queue: asyncio.Queue[Change | Bookmark | Abort] = field(default_factory=asyncio.Queue)

    def wants(self, change: Change) -> bool:
        return change.kind == self.kind and self.namespace in (None, change.namespace)

    def matches(self, obj: JSON | None) -> bool:
        return self.labels.matches(obj) and self.fields.matches(obj)

    def event(self, change: Change) -> JSON | None:
        """The watch event this watcher sees for a change, if any: the label/field selector
        is tested on the old and the new object, as the watch cache does."""
        old_ok, new_ok = self.matches(change.old), self.matches(change.new)
        if new_ok:
            assert change.new is not None
            return {"type": "MODIFIED" if old_ok else "ADDED",
                    "object": self.kind.with_kind(copy.deepcopy(change.new))}
        if old_ok:  # the previous object, stamped with the resourceVersion of this change
            assert change.old is not None
            obj = copy.deepcopy(change.old)
            obj["metadata"]["resourceVersion"] = str(change.rv)
            return {"type": "DELETED", "object": self.kind.with_kind(obj)}
        return None


class Store:
    def __init__(self, history_limit: int, first_rv: int = 1000) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be >= 1, got {history_limit!r}")
        self.rv = first_rv
        self.floor = first_rv  # watches can resume from any rv >= floor
        self.history_limit = history_limit
        self.history: deque[Change] = deque()
        self.objects: dict[tuple[str, str, str], JSON] = {}
        self.watchers: set[Watcher] = set()

    # --- reads ---------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str, name: str) -> JSON | None:
        obj = self.objects.get((kind.plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def require(self, kind: Kind, namespace: str, name: str) -> JSON:
        obj = self.get(kind, namespace, name)
        if obj is None:
            raise not_found(kind, name)
        return obj

    def select(self, kind: Kind, namespace: str | None = None) -> list[JSON]:
        return [copy.deepcopy(obj) for (plural, ns, _), obj in sorted(self.objects.items())
                if plural == kind.plural and (namespace is None or ns == namespace)]

    def changes_since(self, rv: int) -> list[Change]:
        if rv < self.floor:
            raise expired(f"too old resource version: {rv} ({self.floor})")
        return [c for c in self.history if c.rv > rv]

    # --- writes --------------------------------------------------------------------------

    def create(self, kind: Kind, namespace: str, obj: JSON) -> JSON:
        meta = obj.setdefault("metadata", {})
        name = meta["name"]
        if (kind.plural, namespace, name) in self.objects:
            raise already_exists(kind, name)
        meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))  # kept for helper-injected objects only
        meta.setdefault("creationTimestamp", fmt_time(now()))
        for transient in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(transient, None)
        return self._write(kind, namespace, name, None, obj)

    def replace(self, kind: Kind, namespace: str, obj: JSON) -> JSON:
        """Store a new version of an existing object; a no-op write bumps nothing."""
        name = obj["metadata"]["name"]
        old = self.objects.get((kind.plural, namespace, name))
        if old is None:
            raise not_found(kind, name)
        meta = obj["metadata"]
        meta["namespace"] = namespace
        for kept in ("uid", "creationTimestamp"):
            meta[kept] = old["metadata"][kept]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if obj == old:
            return copy.deepcopy(old)
        return self._write(kind, namespace, name, copy.deepcopy(old), obj)

    def remove(self, kind: Kind, namespace: str, name: str) -> JSON:
        old = self.objects.pop((kind.plural, namespace, name), None)
        if old is None:
            raise not_found(kind, name)
        self.rv += 1
        self._record(Change(self.rv, kind, namespace, old, None))
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        return gone

    def _write(self, kind: Kind, namespace: str, name: str, old: JSON | None,
               obj: JSON) -> JSON:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[(kind.plural, namespace, name)] = copy.deepcopy(obj)
        self._record(Change(self.rv, kind, namespace, old, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def _record(self, change: Change) -> None:
        self.history.append(change)
        while len(self.history) > self.history_limit:
            self.floor = self.history.popleft().rv
        for w in self.watchers:
            if w.wants(change):
                w.queue.put_nowait(change)

    # --- history and watchers ------------------------------------------------------------

    def compact(self) -> None:
        """Forget every change: a watch must then start from the current rv or later."""
        self.history.clear()
        self.floor = self.rv

    def bookmark(self) -> None:
        for w in self.watchers:
            if w.bookmarks:
                w.queue.put_nowait(Bookmark(self.rv))

    def abort_watches(self) -> None:
        for w in self.watchers:
            w.queue.put_nowait(Abort())
