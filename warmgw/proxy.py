"""The request path: parse just enough, pick a replica, pass bytes through.

Runs on warmgw.h1 (an HTTP/1.1 server and upstream client on llhttp), not on a web
framework: this is the gateway's hot loop. Streams are passed chunk by chunk as they
arrive. A client that disconnects cancels its handler, which closes the upstream
connection, so vLLM aborts the request. In-flight counts are kept in `finally`.

What a client sends is not trusted: the server enforces the limits on heads, bodies and
slow senders (see warmgw.h1.protocol); here a body must be JSON (415 for another
Content-Type, 400 for bad JSON), and an `X-Request-Id` that is not printable ASCII of at
most 128 characters is replaced, never passed on. A stream whose client stops reading is
cut after clients.write_timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any
from urllib.parse import urlsplit

from warmgw import errors
from warmgw.config import UpstreamParams
from warmgw.core.clock import Clock
from warmgw.core.lifecycle import State
from warmgw.core.model import Endpoint, Route, Snapshot
from warmgw.core.picker import pick
from warmgw.core.registry import Registry, Transition
from warmgw.core.stats import shape_key
from warmgw.core.telemetry import RequestStats, route_of
from warmgw.h1.client import Cut, NotConnected, OutOfFds, Pool, Response
from warmgw.h1.server import Connection, Request

log = logging.getLogger("warmgw.proxy")

# Hop-by-hop headers (RFC 9110 7.6.1) and those the gateway sets itself: not passed on,
# either way (lower-case, as received).
HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
        b"proxy-authorization", b"te", b"trailer", b"trailers", b"transfer-encoding",
        b"upgrade", b"host", b"content-length", b"date", b"server", b"expect",
        b"x-request-id",
    }
)
MAX_REQUEST_ID = 128
JSON_CT = [(b"Content-Type", b"application/json")]


class _NotSent(Exception):
    """The request was not taken by the replica (no connection, or 503 not ready):
    safe to try another. down: the replica is not even listening."""

    def __init__(self, why: str, down: bool = False) -> None:
        super().__init__(why)
        self.down = down


class Proxy:
    def __init__(
        self,
        registry: Registry,
        pool: Pool,
        params: UpstreamParams,
        clock: Clock,
        rng: random.Random,
        naive: bool = False,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.p = params
        self.clock = clock
        self.rng = rng
        self.naive = naive
        self._models_cache: tuple[int, bytes] = (-1, b"")
        self._addr: dict[str, tuple[str, int, bytes]] = {}  # url -> host, port, Host header
        # the handler tasks in flight on each endpoint, so a drain deadline can cut them
        self.running: dict[Endpoint, set[asyncio.Task[Any] | None]] = {}
        self.stats = RequestStats()
        registry.listeners.append(self._forget)

    def _forget(self, t: Transition) -> None:
        """A replica that is gone keeps no entry here (it could never run a request)."""
        if t.to is State.GONE:
            for ep in [e for e in self.running if e.name == t.name and not self.running[e]]:
                del self.running[ep]

    def cut(self, pool: str) -> int:
        """Cancel the requests still in flight on a pool's endpoints; how many were cut."""
        n = 0
        for ep, tasks in list(self.running.items()):
            if ep.pool == pool:
                for t in list(tasks):
                    if t is not None and not t.done():
                        t.cancel()
                        n += 1
            if not tasks:
                del self.running[ep]
        return n

    # -- answers from the gateway itself ----------------------------------------------------

    def _local(self, req: Request, status: int, body: bytes,
               headers: list[tuple[bytes, bytes]] = JSON_CT, close: bool = False) -> None:
        self.stats.count("", "", route_of(req.path), status)
        req.conn.respond(status, headers, body, close)

    def _error(self, req: Request, status: int, message: str, type_: str,
               code: str | int | None = None, param: str | None = None,
               extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [*JSON_CT, *extra] if extra else JSON_CT
        self._local(req, status, errors.body(message, type_, code, param), headers)

    def _no_replica(self, req: Request, message: str) -> None:
        self._error(req, 503, message, "service_unavailable", "no_replica",
                    extra=[(b"Retry-After", b"2")])

    # -- entry ------------------------------------------------------------------------------

    async def handle(self, req: Request) -> None:
        snap = self.registry.snapshot
        body = req.body
        model: str | None = None
        stream = False
        max_tokens = 16
        method = req.method
        if method == "POST":
            ctype = req.get(b"content-type")
            if ctype and ctype != "application/json" and not _is_json(
                    ctype.split(";", 1)[0].strip().lower()):
                return self._error(
                    req, 415, f"Content-Type must be application/json, got {ctype[:100]!r}",
                    "invalid_request_error", "unsupported_media_type",
                )
            try:
                obj: Any = json.loads(body) if body else {}
            except (ValueError, RecursionError) as e:
                return self._error(req, 400, f"request body is not valid JSON: {e}",
                                   "invalid_request_error", "invalid_json")
            if not isinstance(obj, dict):
                return self._error(req, 400, "request body must be a JSON object",
                                   "invalid_request_error", "invalid_json")
            model = obj.get("model")
            if model is None:
                model = _sole_model(snap)
                if model is None:
                    return self._error(req, 400, "the request names no 'model'",
                                       "invalid_request_error", "missing_model", "model")
            elif not isinstance(model, str):
                return self._error(req, 400, f"'model' must be a string, got {model!r}",
                                   "invalid_request_error", "invalid_model", "model")
            stream = obj.get("stream") is True
            mt = obj.get("max_tokens") or obj.get("max_completion_tokens")
            if type(mt) is int and mt > 0:
                max_tokens = mt
        elif req.path == "/v1/models" and method in ("GET", "HEAD"):
            return self._local(req, 200, self.models(snap))

        if model is None:
            route = next(iter(snap.routes.values()), None)
            if route is None:
                return self._no_replica(req, "no replica is routable yet")
        else:
            route = snap.routes.get(model)
            if route is None:
                if model in snap.known_models:
                    return self._no_replica(
                        req, f"no replica serving model '{model}' is routable now")
                return self._error(req, 404, f"The model `{model}` does not exist.",
                                   "invalid_request_error", "model_not_found", "model")
        rid = req.get(b"x-request-id")
        if not rid or len(rid) > MAX_REQUEST_ID or not (rid.isascii() and rid.isprintable()):
            rid = f"{self.rng.getrandbits(128):032x}"
        key = shape_key(stream, len(body), max_tokens)
        await self._send(req, route, rid, model or "", key)

    # -- forwarding -------------------------------------------------------------------------

    def _upstream_request(self, req: Request, host_header: bytes, rid: str) -> bytes:
        out = [b"%b %b HTTP/1.1\r\nHost: %b\r\n" % (req.method.encode(), req.target.encode(
            "latin-1"), host_header)]
        for k, v in req.headers:
            if k.lower() not in HOP:  # hop-by-hop, and X-Request-Id (set below)
                out.append(b"%b: %b\r\n" % (k, v))
        out.append(b"X-Request-Id: %b\r\nContent-Length: %d\r\n\r\n" % (rid.encode(),
                                                                          len(req.body)))
        out.append(req.body)
        return b"".join(out)

    def _address(self, url: str) -> tuple[str, int, bytes]:
        a = self._addr.get(url)
        if a is None:
            parts = urlsplit(url)
            host = parts.hostname or "127.0.0.1"
            port = parts.port or 80
            a = self._addr[url] = (host, port, parts.netloc.encode())
            if len(self._addr) > 100_000:  # replicas come and go; keep it bounded
                self._addr.clear()
        return a

    async def _send(self, req: Request, route: Route, rid: str, model: str, key: int) -> None:
        tried: list[Endpoint] = []
        last = ""
        task = req.task
        running = self.running
        for _ in range(self.p.retries + 1):
            ep = pick(route, self.rng, self.clock.now(), tried, self.naive)
            if ep is None:
                break
            ep.inflight += 1
            ep.requests += 1
            tasks = running.get(ep)
            if tasks is None:
                tasks = running[ep] = set()
            tasks.add(task)
            try:
                return await self._forward(req, ep, rid, model, key)
            except asyncio.CancelledError:  # the client left (or a drain deadline cut it)
                self.stats.count(ep.pool, ep.name, route_of(req.path), 499)
                raise
            except _NotSent as e:
                last = f"{ep.name}: {e}"
                self.registry.failure(ep, str(e), down=e.down)
                tried.append(ep)
            finally:
                ep.inflight -= 1
                tasks.discard(task)
        self._error(req, 502, f"no replica could be reached ({last})", "upstream_error",
                    "upstream_unreachable", extra=[(b"X-Request-Id", rid.encode())])

    async def _forward(self, req: Request, ep: Endpoint, rid: str, model: str,
                       key: int) -> None:
        clock = self.clock
        t0 = clock.now()
        host, port, host_header = self._address(ep.url)
        data = self._upstream_request(req, host_header, rid)
        path = req.path
        try:
            up = await self.pool.request(host, port, data, head_only=req.method == "HEAD")
        except NotConnected as e:
            raise _NotSent(str(e), down=e.down) from None
        except OutOfFds as e:  # the gateway's shortage: the replica is not blamed
            log.error("%s (raise the open-file limit)", e)
            self.stats.count(ep.pool, ep.name, route_of(req.path), 503)
            return req.conn.respond(
                503, [*JSON_CT, (b"Retry-After", b"1"), (b"X-Request-Id", rid.encode())],
                errors.body(f"the gateway is overloaded: {e}", "service_unavailable",
                            "gateway_overloaded"))
        except Cut as e:  # it had the request: not retried, counts against it
            return self._failed(req, ep, rid, e)
        try:
            status = up.status
            if status == 503:  # not ready (loading, sleeping, overloaded): not taken
                raise _NotSent("HTTP 503")
            out = [(k, v) for k, v in up.headers if k.lower() not in HOP]
            out.append((b"X-Request-Id", rid.encode()))
            out.append((b"X-Warmgw-Replica", ep.name.encode()))
            if up.length is None and not up.done:
                return await self._stream(req, ep, up, out, model, key, t0)
            try:
                body = await up.read()
            except Cut as e:
                return self._failed(req, ep, rid, e)
            took = clock.now() - t0
            self.stats.count(ep.pool, ep.name, route_of(path), status)
            if status >= 500:
                self.registry.failure(ep, f"HTTP {status}")
            elif status < 400:
                self.registry.observe(ep, model, key, took)
                self.stats.latency(ep.pool, took, took)
            req.conn.respond(status, out, body)
        finally:
            up.release()

    def _failed(self, req: Request, ep: Endpoint, rid: str, e: Cut) -> None:
        self.registry.failure(ep, str(e))
        code = 504 if e.timeout else 502
        self.stats.count(ep.pool, ep.name, route_of(req.path), code)
        req.conn.respond(code, [*JSON_CT, (b"X-Request-Id", rid.encode()),
                                (b"X-Warmgw-Replica", ep.name.encode())],
                         errors.body(f"replica {ep.name} failed before answering: {e}",
                                     "upstream_error", "upstream_failed"))

    async def _stream(
        self,
        req: Request,
        ep: Endpoint,
        up: Response,
        out: list[tuple[bytes, bytes]],
        model: str,
        key: int,
        t0: float,
    ) -> None:
        """Pass the body through as it comes. Errors writing to the client are the client's
        (it left: 499) and end here; errors reading from the replica count against it."""
        route = route_of(req.path)
        conn = req.conn
        try:
            conn.start(up.status, out)
        except ConnectionResetError:
            self.stats.count(ep.pool, ep.name, route, 499)
            return
        sse = up.content_type.startswith(b"text/event-stream")
        ttfb = -1.0
        last = b"\n\n"
        while True:
            try:
                chunk = await up.chunk()
            except Cut as e:
                return await self._cut(conn, ep, route, sse, last, e)
            if not chunk:
                break
            if ttfb < 0.0:
                ttfb = self.clock.now() - t0
            try:
                await conn.write(chunk)  # cut by the server if the client stops reading
            except ConnectionResetError:  # the client left; leaving closes the upstream
                self.stats.count(ep.pool, ep.name, route, 499)
                return
            last = chunk
        try:
            conn.end()
        except ConnectionResetError:
            self.stats.count(ep.pool, ep.name, route, 499)
            return
        self.stats.count(ep.pool, ep.name, route, up.status)
        if up.status >= 500:
            self.registry.failure(ep, f"HTTP {up.status}")
        elif up.status < 400 and ttfb >= 0.0:
            self.registry.observe(ep, model, key, ttfb)
            self.stats.latency(ep.pool, ttfb, self.clock.now() - t0)

    async def _cut(self, conn: Connection, ep: Endpoint, route: str, sse: bool, last: bytes,
                   e: Cut) -> None:
        """The replica failed after the response began. An SSE stream ends with an error
        event (its own event even if the replica stopped mid-event), so clients raise an
        error instead of taking a short answer for a whole one; any other body is cut off
        (no final chunk), which is how HTTP says the same."""
        code = 504 if e.timeout else 502
        self.registry.failure(ep, f"stream cut: {e}")
        self.stats.count(ep.pool, ep.name, route, code)
        log.debug("replica %s cut a stream: %s", ep.name, e)
        if sse:
            msg = f"replica {ep.name} failed mid-stream: {e}"
            event = errors.sse_event(msg, "upstream_error", code)
            try:
                await conn.write(event if last.endswith(b"\n\n") else b"\n\n" + event)
                conn.end()
                return
            except ConnectionResetError:
                pass
        conn.abort()

    # -- models -----------------------------------------------------------------------------

    def models(self, snap: Snapshot) -> bytes:
        version, cached = self._models_cache
        if version != snap.version:
            data = []
            for m, route in sorted(snap.routes.items()):
                card: dict[str, Any] = {"id": m, "object": "model", "created": 0,
                                        "owned_by": "vllm", "root": m, "parent": None}
                lens = [e.max_model_len for g in route.groups for e in g.endpoints
                        if e.max_model_len]
                if lens:
                    card["max_model_len"] = min(lens)  # what every replica accepts
                data.append(card)
            cached = json.dumps({"object": "list", "data": data}).encode()
            self._models_cache = (snap.version, cached)
        return cached


def _sole_model(snap: Snapshot) -> str | None:
    if len(snap.known_models) == 1:
        return next(iter(snap.known_models))
    return None


def _is_json(mime: str) -> bool:
    """application/json (any parameters) or a +json type, e.g. application/merge-patch+json."""
    return mime == "application/json" or (mime.startswith("application/") and
                                          mime.endswith("+json"))
