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
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from warmgw import errors
from warmgw.config import UpstreamParams
from warmgw.core.facts import (
    Refusal,
    RequestFacts,
    cached_tokens_of,
    from_json,
    prompt_tokens_of,
    route_of,
)
from warmgw.core.keep import sender_of
from warmgw.core.lifecycle import State
from warmgw.core.model import Endpoint, Route, Snapshot
from warmgw.core.registry import Transition
from warmgw.core.routing import Failure, Router, Ticket
from warmgw.h1.failures import Cut, NotConnected, OutOfFds
from warmgw.h1.pool import Pool
from warmgw.h1.server import Request
from warmgw.replicas import Replica
from warmgw.stream import stream

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
_DECODER = json.JSONDecoder()  # json.loads' own (json._default_decoder)


class _NotSent(Exception):
    """The request was not taken by the replica (no connection, or 503 not ready):
    safe to try another. down: the replica is not even listening."""

    def __init__(self, why: str, down: bool = False) -> None:
        super().__init__(why)
        self.down = down


class _Unanswered(Exception):
    """Sent, and the connection (fresh or reused) closed or reset before any byte came
    back (not a timeout): the replica closed an idle connection as it went out, or died
    with it. A completion has no side effect, so it may go once more."""


class Proxy:
    """The HTTP/1.1 front-end of the routing core (core.routing)."""

    def __init__(self, router: Router, pool: Pool, params: UpstreamParams,
                 rng: random.Random) -> None:
        self.router = router
        self.registry = router.registry
        self.pool = pool
        self.p = params
        self.clock = router.clock
        self.rng = rng
        self._models_cache: tuple[int, bytes] = (-1, b"")
        self._addr: dict[str, tuple[str, int, bytes]] = {}  # url -> host, port, Host header

    # -- answers from the gateway itself ----------------------------------------------------

    def _local(self, req: Request, status: int, body: bytes,
               headers: list[tuple[bytes, bytes]] = JSON_CT, close: bool = False) -> None:
        self.router.count_local(route_of(req.path), status)
        req.conn.respond(status, headers, body, close)

    def _error(self, req: Request, status: int, message: str, type_: str,
               code: str | int | None = None, param: str | None = None,
               extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [*JSON_CT, *extra] if extra else JSON_CT
        self._local(req, status, errors.body(message, type_, code, param), headers)

    def _refuse(self, req: Request, r: Refusal) -> None:
        self._error(req, r.status, r.message, r.type, r.code, r.param,
                    extra=[(b"Retry-After", b"2")] if r.retry else None)

    # -- entry ------------------------------------------------------------------------------

    def handle(self, req: Request) -> Coroutine[Any, Any, None] | None:
        """Check the request and answer it if the gateway answers it itself (None); else
        the forwarding, for the connection's task to await (not awaited here: a coroutine
        less to pass through at each wake-up)."""
        snap = self.registry.snapshot
        body = req.body
        method = req.method
        if method == "POST":
            ctype = req.ctype
            if ctype and ctype != b"application/json" and not _is_json(
                    ctype.split(b";", 1)[0].strip().lower().decode("latin-1")):
                shown = ctype.decode("latin-1")[:100]
                self._error(req, 415, f"Content-Type must be application/json, got {shown!r}",
                            "invalid_request_error", "unsupported_media_type")
                return None
            try:
                obj: Any = _loads(body) if body else {}
            except (ValueError, RecursionError) as e:
                self._error(req, 400, f"request body is not valid JSON: {e}",
                            "invalid_request_error", "invalid_json")
                return None
            router = self.router
            routing = router.routing
            if routing is None:
                facts = from_json(req.path, obj, len(body), _sole_model(snap), router.ratios,
                                  router.profile.keep_spec)
            else:
                header = routing.session.header
                facts = from_json(req.path, obj, len(body), _sole_model(snap), router.ratios,
                                  router.profile.keep_spec, routing,
                                  req.get(header.lower().encode()) if header else None)
            if isinstance(facts, Refusal):
                self._refuse(req, facts)
                return None
            keeper = router.keeper
            if keeper is not None and facts.chunks:
                keeper.observe(facts.route, obj, facts.model or "", facts.chunks,
                               sender_of(obj, facts.session, _address(req)), router.clock.now())
        elif req.path == "/v1/models" and method in ("GET", "HEAD"):
            self._local(req, 200, self.models(snap))
            return None
        else:
            facts = RequestFacts(route_of(req.path), None, False, len(body), 16)
        route = self.router.resolve(snap, facts.model)
        if isinstance(route, Refusal):
            self._refuse(req, route)
            return None
        rid = req.rid
        if not rid or len(rid) > MAX_REQUEST_ID or not (
                rid.isascii() and rid.decode("ascii").isprintable()):
            rid = b"%032x" % self.rng.getrandbits(128)
        return self._send(req, route, rid, facts)

    # -- forwarding -------------------------------------------------------------------------

    def _upstream_request(self, req: Request, host_header: bytes, rid: bytes) -> bytes:
        out = [req.method.encode(), b" ", req.target.encode("latin-1"), b" HTTP/1.1\r\nHost: ",
               host_header, b"\r\n"]
        for k, v in req.headers:
            if k.lower() not in HOP:  # hop-by-hop, and X-Request-Id (set below)
                out += (k, b": ", v, b"\r\n")  # cheaper than b"%b: %b\r\n" % (k, v)
        out.append(b"X-Request-Id: %b\r\nContent-Length: %d\r\n\r\n" % (rid,
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
        return a

    def react(self, t: Transition, rec: Replica) -> None:
        """A replica that is gone leaves nothing here: its idle pooled connections are
        closed and its address forgotten."""
        if t.to is State.GONE:
            a = self._addr.pop(t.url, None)
            if a is not None:
                self.pool.close_address(a[0], a[1])

    async def _send(self, req: Request, route: Route, rid: bytes, facts: RequestFacts) -> None:
        tried: list[Endpoint] = []
        last = ""
        task = req.task
        cancel = task.cancel if task is not None else None
        router = self.router
        attempts = self.p.retries + 1
        resend = self.p.retry_unanswered  # one more attempt for a request left unanswered
        unanswered: Endpoint | None = None  # the replica that left it so
        while attempts > 0:
            attempts -= 1
            ticket = router.pick(route, facts, tried, cancel)
            if ticket is None and unanswered is not None:  # no other: that one, afresh
                ticket = router.pick(route, facts, [e for e in tried if e is not unanswered],
                                     cancel)
            if ticket is None:
                break
            try:
                return await self._forward(req, ticket, rid, resend, unanswered is not None)
            except asyncio.CancelledError:  # the client left (or a drain deadline cut it)
                ticket.left()
                raise
            except _NotSent as e:
                last = f"{ticket.ep.name}: {e}"
                ticket.fail(Failure.NOT_SENT, str(e), down=e.down)
                tried.append(ticket.ep)
            except _Unanswered as u:  # once, fresh, on another replica if one routes
                last = f"{ticket.ep.name}: {u}"
                ticket.fail(Failure.UNANSWERED, str(u))
                tried.append(ticket.ep)
                unanswered = ticket.ep
                resend = False
                attempts += 1
            finally:
                ticket.close()
        self._error(req, 502, f"no replica could be reached ({last})", "upstream_error",
                    "upstream_unreachable", extra=[(b"X-Request-Id", rid)])

    async def _forward(self, req: Request, ticket: Ticket, rid: bytes, resend: bool,
                       fresh: bool) -> None:
        """One attempt. resend: a request left unanswered may go once more (_Unanswered).
        fresh: on a new connection, not a pooled one."""
        ep = ticket.ep
        host, port, host_header = self._addr.get(ep.url) or self._address(ep.url)
        data = self._upstream_request(req, host_header, rid)
        try:
            up = await self.pool.request(host, port, data, head_only=req.method == "HEAD",
                                         fresh=fresh)
        except NotConnected as e:
            raise _NotSent(str(e), down=e.down) from None
        except OutOfFds as short:  # the gateway's shortage: the replica is not blamed
            log.error("%s (raise the open-file limit)", short)
            ticket.count(503)
            return req.conn.respond(
                503, [*JSON_CT, (b"Retry-After", b"1"), (b"X-Request-Id", rid)],
                errors.body(f"the gateway is overloaded: {short}", "service_unavailable",
                            "gateway_overloaded"))
        except Cut as cut:  # it had the request (or may have)
            if cut.unanswered and resend:
                self.pool.close_address(host, port)  # its other idle ones are as stale
                raise _Unanswered(str(cut)) from None
            return self._failed(req, ticket, rid, cut)
        try:
            status = up.status
            if status == 503:  # not ready (loading, sleeping, overloaded): not taken
                raise _NotSent("HTTP 503")
            out = []  # a loop, not a comprehension (a function made and called, in 3.11)
            for h in up.headers:
                if h[0].lower() not in HOP:
                    out.append(h)
            out.append((b"X-Request-Id", rid))
            out.append((b"X-Warmgw-Replica", ep.name.encode()))
            if up.length is None and not up.done:
                return await stream(req.conn, ticket, up, out)
            try:  # mostly in with the head: taken without making a coroutine
                body = up.take() if up.done else await up.read()
            except Cut as cut:
                return self._failed(req, ticket, rid, cut)
            ticket.complete(status, prompt_tokens=prompt_tokens_of(body),
                            cached_tokens=cached_tokens_of(body) if ticket.uncached >= 0 else -1)
            req.conn.respond(status, out, body)
        finally:
            up.release()

    def _failed(self, req: Request, ticket: Ticket, rid: bytes, e: Cut) -> None:
        ep = ticket.ep
        code = 504 if e.timeout else 502
        ticket.fail(Failure.UNANSWERED if e.unanswered else Failure.TAKEN, str(e), code)
        req.conn.respond(code, [*JSON_CT, (b"X-Request-Id", rid),
                                (b"X-Warmgw-Replica", ep.name.encode())],
                         errors.body(f"replica {ep.name} failed before answering: {e}",
                                     "upstream_error", "upstream_failed"))

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


def _address(req: Request) -> str:
    t = req.conn.transport
    peer = t.get_extra_info("peername") if t is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def _loads(body: bytes) -> Any:
    """json.loads(body), cheaper (~1.2 us) for a body that is an object and that it would
    read as UTF-8 (its second byte is not NUL): no guess of the encoding, and no
    whitespace regex around the object unless something follows it."""
    if body[:1] == b"{" and body[1:2] != b"\x00":
        s = body.decode("utf-8", "surrogatepass")  # as json.loads decodes it
        obj, end = _DECODER.raw_decode(s)
        return obj if end == len(s) else _DECODER.decode(s)  # trailing space, or extra data
    return json.loads(body)


def _is_json(mime: str) -> bool:
    """application/json (any parameters) or a +json type, e.g. application/merge-patch+json."""
    return mime == "application/json" or (mime.startswith("application/") and
                                          mime.endswith("+json"))
