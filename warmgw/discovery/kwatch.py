"""A list -> watch -> (410 Expired) -> relist loop over any Kubernetes list call, with
bookmarks, server-side watch timeouts and backoff while the API is unreachable.

While the API is away, the last known objects stand: an outage never empties the fleet.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

log = logging.getLogger("warmgw.kubernetes")

ListCall = Callable[..., Awaitable[aiohttp.ClientResponse]]


class Expired(Exception):
    """410: the resourceVersion is older than the history the server keeps."""


class ApiError(Exception):
    pass


class Watcher:
    """Keeps `objects` (name -> raw dict) current; after each change calls on_change with
    what changed: name -> the object as it is now, or None for one deleted. A watch event
    is one name; a (re)list is the difference from what was known."""

    def __init__(
        self,
        what: str,
        list_call: ListCall,
        on_change: Callable[[dict[str, dict[str, Any] | None]], None],
        watch_timeout: int = 300,
        backoff_max: float = 30.0,
        **params: Any,
    ) -> None:
        self.what = what
        self.list_call = list_call
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.backoff_max = backoff_max
        self.params = params
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv: str | None = None
        self.synced = asyncio.Event()
        self.lists = 0  # how many LISTs, for tests and logs
        self.connected = False

    async def run(self) -> None:
        """List once, then watch from the last resourceVersion seen, again and again; after
        an outage, watch on from there; on 410 Expired, list again (and diff)."""
        backoff = 0.25
        while True:
            try:
                if self.rv is None:
                    await self._list()
                while True:
                    await self._watch()
                    backoff = 0.25
            except asyncio.CancelledError:
                raise
            except Expired as e:
                log.info("%s: watch expired (%s); listing again", self.what, e)
                self.rv = None
            except (aiohttp.ClientError, TimeoutError, OSError, ApiError, ValueError) as e:
                if self.connected:
                    log.warning("%s: API unreachable (%s); keeping the last %d known; retrying",
                                self.what, e or type(e).__name__, len(self.objects))
                    self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)

    async def _list(self) -> None:
        resp = await self.list_call(**self.params, _request_timeout=30.0)
        async with resp:
            body = await resp.read()
            if resp.status != 200:
                raise ApiError(f"LIST answered {resp.status}: {body[:200]!r}")
        data = json.loads(body)
        listed = {o["metadata"]["name"]: o for o in data.get("items") or []}
        changed: dict[str, dict[str, Any] | None] = {
            name: None for name in self.objects if name not in listed}
        for name, obj in listed.items():
            if self.objects.get(name) != obj:
                changed[name] = obj
        self.objects = listed
        self.rv = data["metadata"]["resourceVersion"]
        self.lists += 1
        if not self.connected:
            log.info("%s: listed %d (resourceVersion %s)", self.what, len(self.objects), self.rv)
            self.connected = True
        self.on_change(changed)
        self.synced.set()

    async def _watch(self) -> None:
        resp = await self.list_call(
            **self.params,
            watch=True,
            resource_version=self.rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _request_timeout=float(self.watch_timeout + 30),
        )
        async with resp:
            if resp.status == 410:
                raise Expired(f"HTTP 410 for resourceVersion {self.rv}")
            if resp.status != 200:
                raise ApiError(f"WATCH answered {resp.status}: {(await resp.read())[:200]!r}")
            if not self.connected:
                log.info("%s: watching again from resourceVersion %s", self.what, self.rv)
                self.connected = True
            async for line in resp.content:
                if line.strip():
                    self._event(json.loads(line))
        # the stream ended cleanly (timeoutSeconds): watch again from the last rv

    def _event(self, ev: dict[str, Any]) -> None:
        kind, obj = ev.get("type"), ev.get("object") or {}
        meta = obj.get("metadata") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Expired(obj.get("message", "410 Expired"))
            raise ApiError(f"watch error: {obj.get('message')}")
        rv = meta.get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self.rv = rv
            return
        name = meta.get("name")
        if not name:
            return
        now: dict[str, Any] | None
        if kind in ("ADDED", "MODIFIED"):
            self.objects[name] = now = obj
        elif kind == "DELETED":
            self.objects.pop(name, None)
            now = None
        else:
            return
        if rv:
            self.rv = rv
        self.on_change({name: now})
