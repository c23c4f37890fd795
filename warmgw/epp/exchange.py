"""One ext_proc stream (one HTTP request through Envoy) as the routing core sees it.

Envoy sends the request headers, then the body; the exchange buffers the body to its end,
extracts the request facts, resolves and picks through the Router (the same calls as the
HTTP proxy), and answers with the picked endpoint in the `x-gateway-destination-endpoint`
header and in dynamic metadata `envoy.lb` (the Endpoint Picker Protocol). Then it follows
the response: its headers give the status, its first body bytes the time to first byte,
its end the completion. A stream that ends before the response did is a client that left.
A request with nowhere to go is answered by Envoy with the EPP's ImmediateResponse (the
same status and OpenAI error body as the proxy's).

Body modes (from the stream's protocol_config): FULL_DUPLEX_STREAMED, where the request
headers are answered only once the body is in, and every body byte Envoy passes on is
sent back by the EPP; or BUFFERED / STREAMED, where the headers are answered at once and
the destination rides on the body's answer. Without protocol_config, full duplex.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from typing import Any

from warmgw import errors
from warmgw.core.facts import (
    Refusal,
    RequestFacts,
    cached_tokens_of,
    from_json,
    prompt_tokens_of,
    route_of,
)
from warmgw.core.keep import sender_of
from warmgw.core.model import Snapshot
from warmgw.core.routing import Router, Ticket
from warmgw.epp import wire
from warmgw.epp.wire import Event, Kind, Reply

DEST = "x-gateway-destination-endpoint"
LB = "envoy.lb"
JSON = ("content-type", "application/json")


class Phase(Enum):
    REQUEST = "request"  # headers or body still coming
    UPSTREAM = "upstream"  # picked; waiting for the response
    RESPONSE = "response"  # response headers seen, body coming
    DONE = "done"  # answered locally, or the response ended


class Exchange:
    __slots__ = ("_body", "_duplex_req", "_duplex_resp", "_headers", "_streamed", "_tail",
                 "address", "answered_here", "cancel", "fallbacks", "max_body", "phase",
                 "router", "status", "ticket")

    def __init__(self, router: Router, address: Callable[[str], str], max_body: int,
                 fallbacks: int = 0, cancel: Callable[[], object] | None = None) -> None:
        self.router = router
        self.address = address  # endpoint url -> ip:port
        self.max_body = max_body
        self.fallbacks = fallbacks
        self.cancel = cancel
        self.phase = Phase.REQUEST
        self.ticket: Ticket | None = None
        self.answered_here = False  # an ImmediateResponse was sent
        self.status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._duplex_req = True
        self._duplex_resp = True
        self._streamed = False
        self._tail = b""

    # -- events --------------------------------------------------------------------------

    def on(self, ev: Event) -> list[Reply]:
        if ev.request_mode >= 0:
            self._duplex_req = ev.request_mode == wire.BODY_FULL_DUPLEX
            self._duplex_resp = ev.response_mode == wire.BODY_FULL_DUPLEX
        k = ev.kind
        if k is Kind.REQUEST_HEADERS:
            return self._request_headers(ev)
        if k is Kind.REQUEST_BODY:
            return self._request_body(ev)
        if k is Kind.REQUEST_TRAILERS:
            out = self._decide(trailers=True) if self.phase is Phase.REQUEST else []
            return [*out, wire.trailers_reply(True)] if self.phase is not Phase.DONE else out
        if k is Kind.RESPONSE_HEADERS:
            return self._response_headers(ev)
        if k is Kind.RESPONSE_BODY:
            return self._response_body(ev)
        if k is Kind.RESPONSE_TRAILERS:
            self._complete()
            return [wire.trailers_reply(False)]
        return []

    def close(self) -> None:
        """The stream is over (always called): a request still waiting for its response
        was left by its client; the ticket's in-flight count returns."""
        t = self.ticket
        if t is None:
            return
        self.ticket = None
        if self.phase is not Phase.DONE:
            t.left()
            self.phase = Phase.DONE
        t.close()

    # -- request -------------------------------------------------------------------------

    def _request_headers(self, ev: Event) -> list[Reply]:
        self._headers = ev.headers
        if ev.eos:  # no body (GET, HEAD): pick now
            return self._decide()
        if self._duplex_req:
            return []  # answered once the body is in
        return [wire.headers_reply(True)]

    def _request_body(self, ev: Event) -> list[Reply]:
        if self.phase is not Phase.REQUEST:
            return []
        self._body.append(ev.body)
        if sum(len(b) for b in self._body) > self.max_body:
            return self._local(413, f"request body over {self.max_body} bytes",
                               "invalid_request_error", "body_too_large")
        if ev.eos:
            return self._decide()
        return [] if self._duplex_req else [wire.body_reply(True)]

    def _decide(self, trailers: bool = False) -> list[Reply]:
        facts = self._facts()
        if isinstance(facts, Refusal):
            return self._refuse(facts)
        router = self.router
        snap: Snapshot = router.registry.snapshot
        route = router.resolve(snap, facts.model)
        if isinstance(route, Refusal):
            return self._refuse(route)
        ticket = router.pick(route, facts, (), self.cancel)
        if ticket is None:
            return self._refuse(Refusal(503, "no replica is routable now", "service_unavailable",
                                        "no_replica", retry=True))
        self.ticket = ticket
        self.phase = Phase.UPSTREAM
        dest = [self.address(ticket.ep.url)]
        if self.fallbacks:
            dest += [self.address(e.url) for e in router.alternates(route, ticket.ep,
                                                                    self.fallbacks)]
        value = ",".join(dest)
        body = b"".join(self._body)
        headers = [(DEST, value)]
        if self._body:
            headers.append(("content-length", str(len(body))))
        metadata = {LB: {DEST: value}}
        if self._body and self._duplex_req:
            return [wire.headers_reply(True, headers, metadata),
                    wire.body_reply(True, body, not trailers)]
        if self._body:
            return [wire.body_reply(True, None, headers=headers, metadata=metadata)]
        return [wire.headers_reply(True, headers, metadata)]

    def _facts(self) -> RequestFacts | Refusal:
        h = self._headers
        path = h.get(":path", "/").split("?", 1)[0]
        body = b"".join(self._body)
        if h.get(":method", "GET") != "POST":
            return RequestFacts(route_of(path), None, False, len(body), 16)
        ctype = h.get("content-type", "")
        mime = ctype.split(";", 1)[0].strip().lower()
        if ctype and not (mime == "application/json" or (
                mime.startswith("application/") and mime.endswith("+json"))):
            return Refusal(415, f"Content-Type must be application/json, got {ctype[:100]!r}",
                           "invalid_request_error", "unsupported_media_type")
        try:
            obj: Any = json.loads(body) if body else {}
        except (ValueError, RecursionError) as e:
            return Refusal(400, f"request body is not valid JSON: {e}", "invalid_request_error",
                           "invalid_json")
        router = self.router
        known = router.registry.snapshot.known_models
        sole = next(iter(known)) if len(known) == 1 else None
        routing = router.routing
        header = routing.session.header if routing is not None else ""
        facts = from_json(path, obj, len(body), sole, router.ratios, router.profile.keep_spec,
                          routing, (h.get(header.lower()) or None) if header else None)
        keeper = router.keeper
        if keeper is not None and isinstance(facts, RequestFacts) and facts.chunks:
            # the client's address as Envoy saw it: the first X-Forwarded-For entry
            address = h.get("x-forwarded-for", "").split(",", 1)[0].strip()
            keeper.observe(facts.route, obj, facts.model or "", facts.chunks,
                           sender_of(obj, facts.session, address), router.clock.now())
        return facts

    def _refuse(self, r: Refusal) -> list[Reply]:
        return self._local(r.status, r.message, r.type, r.code, r.param, r.retry)

    def _local(self, status: int, message: str, type_: str, code: str,
               param: str | None = None, retry: bool = False) -> list[Reply]:
        path = self._headers.get(":path", "/").split("?", 1)[0]
        self.router.count_local(route_of(path), status)
        self.phase = Phase.DONE
        self.answered_here = True
        headers = [JSON, ("retry-after", "2")] if retry else [JSON]
        return [wire.immediate(status, headers, errors.body(message, type_, code, param),
                               f"warmgw_{code}")]

    # -- response ------------------------------------------------------------------------

    def _response_headers(self, ev: Event) -> list[Reply]:
        try:
            self.status = int(ev.headers.get(":status", "0"))
        except ValueError:
            self.status = 0
        self._streamed = "content-length" not in ev.headers
        if ev.served and self.ticket is not None and self.phase is Phase.UPSTREAM:
            self._served(ev.served)
        if self.phase is Phase.UPSTREAM:
            self.phase = Phase.RESPONSE
            if ev.eos:
                self._complete()
        return [wire.headers_reply(False)]

    def _served(self, served: str) -> None:
        """Envoy reports the endpoint that served the request: when it is not the one
        picked (it fell back down the list), the outcome belongs to the one that served."""
        t = self.ticket
        assert t is not None
        if served == self.address(t.ep.url):
            return
        for ep in self.router.registry.endpoints.values():
            if self.address(ep.url) == served:
                self.ticket = self.router.moved(
                    t, ep, f"Envoy served the request from {served} instead")
                return

    def _response_body(self, ev: Event) -> list[Reply]:
        t = self.ticket
        if t is not None and self.phase is Phase.RESPONSE:
            if ev.body:
                t.first_byte()
                self._tail = self._tail[-64:] + ev.body[-4096:]
            if ev.eos:
                self._complete()
        if self._duplex_resp:
            return [wire.body_reply(False, ev.body, ev.eos)]
        return [wire.body_reply(False)]

    def _complete(self) -> None:
        t = self.ticket
        if t is None or self.phase is not Phase.RESPONSE:
            return
        self.phase = Phase.DONE
        self.ticket = None
        try:
            tail = self._tail
            t.complete(self.status, streamed=self._streamed,
                       prompt_tokens=prompt_tokens_of(tail),
                       cached_tokens=cached_tokens_of(tail) if t.uncached >= 0 else -1)
        finally:  # done: the in-flight count returns before Envoy passes the last bytes on
            t.close()
