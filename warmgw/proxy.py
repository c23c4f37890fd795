"""The request path: parse just enough, pick a replica, pass bytes through.

Streams are passed chunk by chunk as they arrive. A client that disconnects cancels its
handler (the server runs with handler_cancellation), which closes the upstream connection,
so vLLM aborts the request. In-flight counts are kept in `finally`.

What a client sends is not trusted (see ClientLimits): headers must fit `max_head_bytes`
in all (431), a body must be JSON (415 for another Content-Type, 400 for bad JSON), arrive
within `body_timeout` (408, then the connection is closed: a slow sender cannot hold a
handler) and fit `max_body_bytes` (413); an `X-Request-Id` that is not printable ASCII of at
most 128 characters is replaced, never passed on.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import logging
import random
import struct
import termios
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from warmgw import errors
from warmgw.config import ClientLimits, UpstreamParams
from warmgw.core.clock import Clock
from warmgw.core.lifecycle import State
from warmgw.core.model import Endpoint, Route, Snapshot
from warmgw.core.picker import pick
from warmgw.core.registry import Registry, Transition
from warmgw.core.stats import shape_key
from warmgw.core.telemetry import RequestStats, route_of

log = logging.getLogger("warmgw.proxy")

# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets itself.
HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
        "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
        "host", "content-length", "date", "server", "expect",
    }
)
# What a replica can do to a request it has taken: cut it, reset it, send garbage, go quiet.
# (A refused or timed-out connect is caught before these: the request was not sent.)
UPSTREAM_CUT = (aiohttp.ClientError, TimeoutError)
MAX_REQUEST_ID = 128


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
        session: aiohttp.ClientSession,
        params: UpstreamParams,
        clock: Clock,
        rng: random.Random,
        naive: bool = False,
        limits: ClientLimits | None = None,
    ) -> None:
        self.registry = registry
        self.session = session
        self.p = params
        self.clock = clock
        self.rng = rng
        self.naive = naive
        lim = limits or ClientLimits()
        self.body_timeout = lim.body_timeout
        self.write_timeout = lim.write_timeout
        self.max_head_bytes = lim.max_head_bytes
        self._models_cache: tuple[int, bytes] = (-1, b"")
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

    # -- entry ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resp = await self._handle(request)
        if "X-Warmgw-Replica" not in resp.headers:  # answered by the gateway itself
            self.stats.count("", "", route_of(request.path), resp.status)
        return resp

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        snap = self.registry.snapshot
        body = b""
        model: str | None = None
        stream = False
        max_tokens = 16
        headers = CIMultiDict[str]()
        size = 0
        for k, v in request.headers.items():
            size += len(k) + len(v)
            if k.lower() not in HOP:
                headers.add(k, v)
        if size > self.max_head_bytes:
            return errors.response(
                431, f"request headers are larger than the limit of {self.max_head_bytes} "
                "bytes", "invalid_request_error", "headers_too_large",
            )
        if request.method == "POST":
            ctype = request.headers.get("Content-Type")
            if ctype and ctype != "application/json" and not _is_json(request.content_type):
                return errors.response(
                    415, f"Content-Type must be application/json, got {ctype[:100]!r}",
                    "invalid_request_error", "unsupported_media_type",
                )
            try:
                if request.content.is_eof():  # the whole body came with the headers
                    body = await request.read()
                else:
                    async with asyncio.timeout(self.body_timeout):
                        body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return errors.response(
                    413,
                    f"request body is larger than the limit of {self.p.max_body_bytes} bytes",
                    "invalid_request_error",
                    "request_too_large",
                )
            except TimeoutError:
                return await self._too_slow(request)
            try:
                obj: Any = json.loads(body) if body else {}
            except (ValueError, RecursionError) as e:
                return errors.response(
                    400, f"request body is not valid JSON: {e}", "invalid_request_error",
                    "invalid_json",
                )
            if not isinstance(obj, dict):
                return errors.response(
                    400, "request body must be a JSON object", "invalid_request_error",
                    "invalid_json",
                )
            model = obj.get("model")
            if model is None:
                model = _sole_model(snap)
                if model is None:
                    return errors.response(
                        400, "the request names no 'model'", "invalid_request_error",
                        "missing_model", "model",
                    )
            elif not isinstance(model, str):
                return errors.response(
                    400, f"'model' must be a string, got {model!r}", "invalid_request_error",
                    "invalid_model", "model",
                )
            stream = obj.get("stream") is True
            mt = obj.get("max_tokens") or obj.get("max_completion_tokens")
            if type(mt) is int and mt > 0:
                max_tokens = mt
        elif request.path == "/v1/models" and request.method == "GET":
            return self.models(snap)

        if model is None:
            route = next(iter(snap.routes.values()), None)
            if route is None:
                return _no_replica("no replica is routable yet")
        else:
            route = snap.routes.get(model)
            if route is None:
                if model in snap.known_models:
                    return _no_replica(f"no replica serving model '{model}' is routable now")
                return errors.response(
                    404, f"The model `{model}` does not exist.", "invalid_request_error",
                    "model_not_found", "model",
                )
        rid = request.headers.get("X-Request-Id")
        if not rid or len(rid) > MAX_REQUEST_ID or not (rid.isascii() and rid.isprintable()):
            rid = f"{self.rng.getrandbits(128):032x}"
        headers["X-Request-Id"] = rid
        key = shape_key(stream, len(body), max_tokens)
        return await self._send(request, route, body, headers, model or "", key, rid)

    async def _too_slow(self, request: web.Request) -> web.StreamResponse:
        """The body did not arrive in time: answer 408 and close the connection, so that a
        slow sender does not keep it (aiohttp would otherwise linger, reading the rest)."""
        resp = errors.response(
            408, f"the request body did not arrive within {self.body_timeout:g} s",
            "invalid_request_error", "request_timeout",
        )
        resp.force_close()
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionResetError:
            pass
        request.protocol.force_close()
        return resp

    # -- forwarding ----------------------------------------------------------------------

    async def _send(
        self,
        request: web.Request,
        route: Route,
        body: bytes,
        headers: CIMultiDict[str],
        model: str,
        key: int,
        rid: str,
    ) -> web.StreamResponse:
        tried: list[Endpoint] = []
        last = ""
        task = request.task
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
                return await self._forward(request, ep, body, headers, model, key, rid)
            except asyncio.CancelledError:  # the client left (or a drain deadline cut it)
                self.stats.count(ep.pool, ep.name, route_of(request.path), 499)
                raise
            except _NotSent as e:
                last = f"{ep.name}: {e}"
                self.registry.failure(ep, str(e), down=e.down)
                tried.append(ep)
            finally:
                ep.inflight -= 1
                tasks.discard(task)
        return errors.response(
            502, f"no replica could be reached ({last})", "upstream_error", "upstream_unreachable",
            headers={"X-Request-Id": rid},
        )

    async def _forward(
        self,
        request: web.Request,
        ep: Endpoint,
        body: bytes,
        headers: CIMultiDict[str],
        model: str,
        key: int,
        rid: str,
    ) -> web.StreamResponse:
        clock = self.clock
        t0 = clock.now()
        try:
            async with self.session.request(
                request.method,
                ep.url + request.path_qs,
                data=(body if len(body) < 1 << 20 else io.BytesIO(body)) if body else None,
                headers=headers,
                allow_redirects=False,
            ) as up:
                out = CIMultiDict[str]()
                for k, v in up.headers.items():
                    if k.lower() not in HOP:
                        out.add(k, v)
                out["X-Request-Id"] = rid
                out["X-Warmgw-Replica"] = ep.name
                status = up.status
                if status == 503:  # not ready (loading, sleeping, overloaded): not taken
                    raise _NotSent("HTTP 503")
                if up.content_length is None and request.method != "HEAD":
                    return await self._stream(request, ep, up, out, model, key, t0)
                data = await up.read()
                took = clock.now() - t0
                self.stats.count(ep.pool, ep.name, route_of(request.path), status)
                if status >= 500:
                    self.registry.failure(ep, f"HTTP {status}")
                elif status < 400:
                    self.registry.observe(ep, model, key, took)
                    self.stats.latency(ep.pool, took, took)
                return web.Response(status=status, body=data, headers=out)
        except aiohttp.ClientConnectorError as e:
            raise _NotSent(str(e) or type(e).__name__, down=True) from None
        except aiohttp.ConnectionTimeoutError:
            raise _NotSent("connect timed out") from None
        except UPSTREAM_CUT as e:  # it had the request: not retried, counts against it
            self.registry.failure(ep, _what(e))
            code = 504 if isinstance(e, TimeoutError) else 502
            self.stats.count(ep.pool, ep.name, route_of(request.path), code)
            return errors.response(
                code,
                f"replica {ep.name} failed before answering: {_what(e)}",
                "upstream_error", "upstream_failed",
                headers={"X-Request-Id": rid, "X-Warmgw-Replica": ep.name},
            )

    async def _stream(
        self,
        request: web.Request,
        ep: Endpoint,
        up: aiohttp.ClientResponse,
        out: CIMultiDict[str],
        model: str,
        key: int,
        t0: float,
    ) -> web.StreamResponse:
        """Pass the body through as it comes. Errors writing to the client are the client's
        (it left: 499) and end here; errors reading from the replica count against it."""
        route = route_of(request.path)
        resp = web.StreamResponse(status=up.status, headers=out)
        try:
            await resp.prepare(request)
        except ConnectionResetError:
            self.stats.count(ep.pool, ep.name, route, 499)
            return resp
        sse = up.content_type == "text/event-stream"
        ttfb = -1.0
        content = up.content
        last = b"\n\n"
        stall = _Stall(request, self.write_timeout)
        now = stall.now
        try:
            while True:
                try:
                    chunk = await content.readany()
                except UPSTREAM_CUT as e:
                    return await self._cut(request, ep, resp, sse, last, e)
                if not chunk:
                    break
                if ttfb < 0.0:
                    ttfb = self.clock.now() - t0
                stall.since = now()
                try:
                    await resp.write(chunk)
                except ConnectionResetError:  # the client left; leaving closes the upstream
                    self.stats.count(ep.pool, ep.name, route, 499)
                    return resp
                stall.since = 0.0
                last = chunk
        finally:
            stall.stop()
        try:
            await resp.write_eof()
        except ConnectionResetError:
            self.stats.count(ep.pool, ep.name, route, 499)
            return resp
        self.stats.count(ep.pool, ep.name, route, up.status)
        if up.status >= 500:
            self.registry.failure(ep, f"HTTP {up.status}")
        elif up.status < 400 and ttfb >= 0.0:
            self.registry.observe(ep, model, key, ttfb)
            self.stats.latency(ep.pool, ttfb, self.clock.now() - t0)
        return resp

    async def _cut(
        self,
        request: web.Request,
        ep: Endpoint,
        resp: web.StreamResponse,
        sse: bool,
        last: bytes,
        e: BaseException,
    ) -> web.StreamResponse:
        """The replica failed after the response began. An SSE stream ends with an error
        event (its own event even if the replica stopped mid-event), so clients raise an
        error instead of taking a short answer for a whole one; any other body is cut off
        (no final chunk), which is how HTTP says the same."""
        code = 504 if isinstance(e, TimeoutError) else 502
        self.registry.failure(ep, f"stream cut: {_what(e)}")
        self.stats.count(ep.pool, ep.name, route_of(request.path), code)
        log.debug("replica %s cut a stream: %s", ep.name, _what(e))
        if sse:
            msg = f"replica {ep.name} failed mid-stream: {_what(e)}"
            event = errors.sse_event(msg, "upstream_error", code)
            try:
                await resp.write(event if last.endswith(b"\n\n") else b"\n\n" + event)
                return resp
            except ConnectionResetError:
                pass
        request.protocol.force_close()
        return resp

    # -- models --------------------------------------------------------------------------

    def models(self, snap: Snapshot) -> web.Response:
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
        return web.Response(body=cached, content_type="application/json")


class _Stall:
    """Cuts a stream whose client has stopped reading it: a write has waited for the
    client's socket to drain, and nothing of what is queued for the client (the
    transport's buffer and the kernel's send queue) has gone out for `timeout` s. Without
    it such a client would hold the handler, the upstream connection and the replica's
    generation for as long as the replica keeps producing. A slow reader is not cut: its
    queue keeps shrinking. One timer per stream; a write only stamps the time."""

    __slots__ = ("_queued", "_since_progress", "_timer", "now", "request", "since", "timeout")

    def __init__(self, request: web.Request, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.timeout = timeout
        self.now = loop.time
        self.since = 0.0  # when the pending write began; 0: none pending
        self._queued = -1  # bytes queued for the client at the last check; -1: unknown
        self._since_progress = 0.0
        self._timer: asyncio.TimerHandle | None = loop.call_later(timeout, self._check)

    def _check(self) -> None:
        since = self.since
        now = self.now()
        loop = asyncio.get_running_loop()
        if not since:
            self._queued = -1
            self._timer = loop.call_at(now + self.timeout, self._check)
            return
        transport = self.request.transport
        if transport is None:
            self._timer = None
            return
        queued = _queued(transport)
        if self._queued < 0 or queued < self._queued:
            self._since_progress = now
        self._queued = queued
        stuck = now - max(since, self._since_progress)
        if stuck >= self.timeout:
            log.info("client of %s read nothing for %.1f s (%d bytes queued for it): "
                     "stream cut", self.request.path, stuck, queued)
            transport.abort()  # the pending write raises ConnectionResetError
            self._timer = None
            return
        self._timer = loop.call_at(now + self.timeout / 2, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _queued(transport: asyncio.BaseTransport) -> int:
    """Bytes written for the client and not yet taken by it: the transport's buffer and
    the kernel's send queue (SIOCOUTQ, where the platform has it)."""
    size = getattr(transport, "get_write_buffer_size", None)  # uvloop's: no WriteTransport
    n = int(size()) if size is not None else 0
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        except OSError:
            pass
    return n


def _sole_model(snap: Snapshot) -> str | None:
    if len(snap.known_models) == 1:
        return next(iter(snap.known_models))
    return None


def _is_json(mime: str) -> bool:
    """application/json (any parameters) or a +json type, e.g. application/merge-patch+json."""
    return mime == "application/json" or (mime.startswith("application/") and
                                          mime.endswith("+json"))


def _no_replica(message: str) -> web.Response:
    return errors.response(
        503, message, "service_unavailable", "no_replica", headers={"Retry-After": "2"}
    )


def _what(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "no bytes within the read timeout"
    return str(e) or type(e).__name__
