"""The REST surface of the fake API server: routes, LIST (with limit/continue), WATCH streams
and Status responses. Semantics live in fake_cluster; history in fake_store."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .fake_cluster import Cluster
from .fake_kinds import JSON, KINDS, PODS, ApiError, Kind, bad_request, expired
from .fake_patch import SUPPORTED, unsupported_media_type
from .fake_selectors import FieldSelector, LabelSelector
from .fake_store import Abort, Bookmark, Watcher

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NOT_FOUND = ApiError(404, "NotFound", "the server could not find the requested resource", {})
METHOD_NOT_ALLOWED = ApiError(405, "MethodNotAllowed",
                              "the server does not allow this method on the requested resource")


def truthy(value: str | None) -> bool:
    """A bool query parameter: false only when absent, "0" or "false" (any case)."""
    return value is not None and value.lower() not in ("0", "false")


def json_response(obj: JSON, status: int = 200, pretty: bool = False) -> web.Response:
    text = json.dumps(obj, indent=2) if pretty else json.dumps(obj, separators=(",", ":"))
    return web.Response(status=status, text=text + "\n", content_type="application/json")


def status_response(error: ApiError) -> web.Response:
    return json_response(error.status(), status=error.code)


def _int_param(q: Any, name: str) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"invalid value for {name}: {raw!r}") from None


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None


class ApiHandlers:
    def __init__(self, cluster: Cluster, *, bookmark_interval: float | None,
                 default_watch_timeout: float | None) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self._continues: dict[str, tuple[int, list[JSON]]] = {}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for kind in KINDS:
            coll = f"{kind.prefix}/namespaces/{{ns}}/{kind.plural}"
            router.add_route("*", f"{kind.prefix}/{kind.plural}", self._bind(self._all, kind))
            router.add_route("*", coll, self._bind(self._collection, kind))
            router.add_route("*", coll + "/{name}", self._bind(self._item, kind))
            if kind is PODS:
                router.add_route("*", coll + "/{name}/status", self._bind(self._status, kind))

    @staticmethod
    def _bind(method: Callable[[web.Request, Kind], Awaitable[web.StreamResponse]],
              kind: Kind) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await method(request, kind)
        return handler

    @staticmethod
    def _allow(kind: Kind, verb: str) -> None:
        if verb not in kind.verbs:
            raise METHOD_NOT_ALLOWED

    # --- routes --------------------------------------------------------------------------

    async def _all(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        if request.method != "GET":
            raise METHOD_NOT_ALLOWED
        return await self._read_collection(request, kind, None)

    async def _collection(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        ns = request.match_info["ns"]
        if request.method == "GET":
            return await self._read_collection(request, kind, ns)
        if request.method == "POST":
            self._allow(kind, "create")
            obj = self.cluster.create(kind, ns, await _json_body(request))
            return self._object(request, kind, obj, 201)
        raise METHOD_NOT_ALLOWED

    async def _item(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if request.method == "GET":
            self._allow(kind, "get")
            obj = self.store.require(kind, ns, name)
        elif request.method == "PUT":
            self._allow(kind, "update")
            obj = self.cluster.update(kind, ns, name, await _json_body(request))
        elif request.method == "PATCH":
            self._allow(kind, "patch")
            obj = await self._patch(request, kind, ns, name, None)
        elif request.method == "DELETE":
            self._allow(kind, "delete")
            opts = await _json_body(request) or {}
            grace = _int_param(request.query, "gracePeriodSeconds")
            if grace is None and isinstance(opts.get("gracePeriodSeconds"), int):
                grace = opts["gracePeriodSeconds"]
            obj = self.cluster.delete(kind, ns, name, grace, opts.get("preconditions"))
        else:
            raise METHOD_NOT_ALLOWED
        return self._object(request, kind, obj)

    async def _status(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if request.method == "GET":
            return self._object(request, kind, self.store.require(kind, ns, name))
        if request.method != "PATCH":
            raise METHOD_NOT_ALLOWED
        return self._object(request, kind, await self._patch(request, kind, ns, name, "status"))

    async def _patch(self, request: web.Request, kind: Kind, ns: str, name: str,
                     subresource: str | None) -> JSON:
        content_type = request.content_type
        if content_type not in SUPPORTED:
            raise unsupported_media_type(content_type)
        body = await _json_body(request)
        return self.cluster.patch(kind, ns, name, content_type, body, subresource)

    @staticmethod
    def _object(request: web.Request, kind: Kind, obj: JSON, status: int = 200) -> web.Response:
        return json_response(kind.with_kind(obj), status, truthy(request.query.get("pretty")))

    # --- LIST ----------------------------------------------------------------------------

    async def _read_collection(self, request: web.Request, kind: Kind,
                               ns: str | None) -> web.StreamResponse:
        q = request.query
        if truthy(q.get("watch")):
            self._allow(kind, "watch")
            return await self._watch(request, kind, ns)
        self._allow(kind, "list")
        limit = _int_param(q, "limit")
        token = q.get("continue")
        if token:
            if token not in self._continues or self._continues[token][0] < self.store.floor:
                raise expired("The provided continue parameter is too old to display a "
                              "consistent list result. You can start a new list without the "
                              "continue parameter.")
            list_rv, items = self._continues.pop(token)
        else:
            self._check_list_rv(q.get("resourceVersion"), q.get("resourceVersionMatch"))
            labels = LabelSelector(q.get("labelSelector"))
            fields = FieldSelector(q.get("fieldSelector"), kind.plural)
            items = [o for o in self.store.select(kind, ns)
                     if labels.matches(o) and fields.matches(o)]
            list_rv = self.store.rv
        meta: JSON = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            items, rest = items[:limit], items[limit:]
            next_token = secrets.token_urlsafe(24)
            self._continues[next_token] = (list_rv, rest)
            meta.update({"continue": next_token, "remainingItemCount": len(rest)})
        body = {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta,
                "items": items}
        return json_response(body, pretty=truthy(q.get("pretty")))

    def _check_list_rv(self, rv: str | None, match: str | None) -> None:
        if rv in (None, "", "0"):
            return
        try:
            wanted = int(rv)
        except ValueError:
            raise bad_request(f"invalid resource version: {rv!r}") from None
        if wanted > self.store.rv:
            raise ApiError(504, "Timeout",
                           f"Too large resource version: {wanted}, current: {self.store.rv}",
                           {"causes": [{"reason": "ResourceVersionTooLarge",
                                        "message": "Too large resource version"}],
                            "retryAfterSeconds": 1})
        if match == "Exact" and wanted != self.store.rv:
            raise expired(f"too old resource version: {wanted} ({self.store.rv})")

    # --- WATCH ---------------------------------------------------------------------------

    async def _watch(self, request: web.Request, kind: Kind, ns: str | None) -> web.StreamResponse:
        q = request.query
        watcher = Watcher(kind, ns, LabelSelector(q.get("labelSelector")),
                          FieldSelector(q.get("fieldSelector"), kind.plural),
                          truthy(q.get("allowWatchBookmarks")))
        timeout = _int_param(q, "timeoutSeconds")
        duration = timeout if timeout is not None else self.default_watch_timeout
        rv = q.get("resourceVersion")
        initial: list[JSON] = []
        error: ApiError | None = None
        since = 0
        if rv in (None, "", "0") or truthy(q.get("sendInitialEvents")):
            initial = [{"type": "ADDED", "object": kind.with_kind(o)}
                       for o in self.store.select(kind, ns) if watcher.matches(o)]
            since = self.store.rv
        else:
            try:
                since = int(rv)
            except ValueError:
                raise bad_request(f"invalid resource version: {rv!r}") from None
            try:
                initial = [e for c in self.store.changes_since(since)
                           if watcher.wants(c) and (e := watcher.event(c)) is not None]
            except ApiError as e:
                error = e
        if error is None:  # no await since the snapshot: no change can slip between
            self.store.watchers.add(watcher)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            if error is not None:
                await _send(resp, {"type": "ERROR", "object": error.status()})
            else:
                for event in initial:
                    await _send(resp, event)
                if truthy(q.get("sendInitialEvents")) and watcher.bookmarks:
                    await _send(resp, _bookmark(kind, self.store.rv, initial_end=True))
                if not await self._stream(resp, watcher, since, duration):
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
            await resp.write_eof()
            return resp
        finally:
            self.store.watchers.discard(watcher)

    async def _stream(self, resp: web.StreamResponse, watcher: Watcher, since: int,
                      duration: float | None) -> bool:
        """Forward changes until the timeout (True: end cleanly) or an Abort (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration if duration is not None else None
        interval = self.bookmark_interval if watcher.bookmarks else None
        next_bookmark = loop.time() + interval if interval else None
        while True:
            wake = min((t for t in (deadline, next_bookmark) if t is not None), default=None)
            try:
                async with asyncio.timeout_at(wake):
                    item = await watcher.queue.get()
            except TimeoutError:
                # uvloop's timers have millisecond resolution: one may fire just before
                # its deadline, so "close enough" (or no bookmark due) is the deadline
                if deadline is not None and (interval is None
                                             or loop.time() >= deadline - 0.005):
                    return True
                assert interval is not None
                next_bookmark = loop.time() + interval
                item = Bookmark(self.store.rv)
            if isinstance(item, Abort):
                return False
            if isinstance(item, Bookmark):
                await _send(resp, _bookmark(watcher.kind, item.rv))
                continue
            if item.rv > since and (event := watcher.event(item)) is not None:
                await _send(resp, event)


def _bookmark(kind: Kind, rv: int, initial_end: bool = False) -> JSON:
    meta: JSON = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version,
                                           "metadata": meta}}


async def _send(resp: web.StreamResponse, event: JSON) -> None:
    await resp.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
