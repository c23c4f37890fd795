"""The reading half of a client connection: HTTP/1.1 parsed by llhttp (httptools), one
request at a time handed to the answering half (warmgw.h1.cycle.Connection), pipelined
ones queued behind it, and the client limits (ClientLimits) enforced as the bytes arrive:

- the request head must arrive within idle_timeout (also the keep-alive idle bound),
- header lines, the request line, the number of headers, and their total size are capped
  (400, or 431 for the total, never forwarded), llhttp rejects ambiguous framing,
- the body must arrive within body_timeout (408, connection closed) and fit max_body
  bytes (413, connection closed, with or without Content-Length),
- at most max_connections client connections are open at once (503 for one more).

It does no I/O of its own: it is fed bytes (data_received), writes to the transport it is
given, and takes its timers from the server's loop (call_later), so a test drives it with
a fake transport and a fake clock (tests/test_h1_protocol.py).

One lazy timer a connection: a limit moves a deadline (a float), and the timer, armed at
most once per deadline that is nearer than the one it waits for, looks at the deadline
when it fires and waits again if it has moved. A keep-alive request would otherwise make
and cancel two timer handles (about 3 us of the request path's CPU); and the body timer is
armed only when the body did not come in the read that ended the head.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Protocol, cast

import httptools

from warmgw import errors
from warmgw.h1.cycle import Connection, Host, Request

log = logging.getLogger("warmgw.server")

MAX_PIPELINED = 8  # complete requests queued behind the running one before reading pauses


class ProtocolHost(Host, Protocol):
    """What the protocol takes from its server, beyond what the request cycle does."""

    connections: set[HttpProtocol]
    refused: int
    max_body: int


IDLE, BODY = 1, 2  # the limits a connection's timer keeps (_arm)


class HttpProtocol(Connection):
    """One client connection: what the server's listener creates for each."""

    __slots__ = ("_body", "_body_size", "_head_began", "_head_bytes", "_head_cap",
                 "_head_open", "_head_seen", "_headers", "_in_body", "_limit", "_limit_at",
                 "_req", "_timer", "_timer_at", "_url",
                 "host", "parser", "pending", "reading_paused")

    _req: Request  # the request being read, from its head on

    def __init__(self, server: ProtocolHost) -> None:
        super().__init__(server)
        self.host = server  # the server, with what the protocol alone takes of it
        self.parser = httptools.HttpRequestParser(self)
        self.pending: collections.deque[Request] = collections.deque()
        self.reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the timer fires
        self._limit = 0  # the limit a deadline stands for (below; 0: none)
        self._limit_at = 0.0  # its deadline
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_body = False
        # bytes received while a request head is incomplete (bounded: see data_received)
        self._head_open = False
        self._head_began = False
        self._head_seen = 0
        lim = self.limits
        self._head_cap = lim.max_head_bytes + lim.max_line_size + 2 * lim.max_headers + 4096

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        if len(self.host.connections) >= self.limits.max_connections:
            self.host.refused += 1
            if self.host.refused % 1000 == 1:  # the first, then every 1000th
                log.warning("client connections at the limit of %d: turned away %d so far "
                            "(clients.max_connections)", self.limits.max_connections,
                            self.host.refused)
            self.closing = True
            body = errors.body(f"the gateway has {self.limits.max_connections} client "
                               "connections open, its limit; retry", "service_unavailable",
                               "too_many_connections")
            head = self._head(503, [(b"Content-Type", b"application/json"),
                                    (b"Retry-After", b"1")], False)
            head.append(b"Content-Length: %d\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
            self.transport.close()
            return
        self.host.connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.host.connections.discard(self)
        self._drop_timer()
        self.pending.clear()
        super().connection_lost(exc)  # cancels the request in hand, fails a waiting write

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError as e:
            if not self.closing:
                self._reject(400, f"malformed HTTP request: {e}")
            return
        except _Refused:
            return  # answered and closing
        if self._in_body and self._limit != BODY:  # the body did not come with its head
            self._arm(BODY, self.limits.body_timeout)
        if self._head_open:  # llhttp keeps a header until its line ends: bound that
            # (the read in which a head began is not counted, as it may hold the end of an
            # earlier request too; one read is bounded by the transport's buffer anyway)
            if self._head_began:
                self._head_began = False
            else:
                self._head_seen += len(data)
            if self._head_seen > self._head_cap:
                self._reject(431, f"request headers are larger than the limit of "
                                  f"{self.limits.max_head_bytes} bytes", "headers_too_large")

    def eof_received(self) -> bool | None:
        # the client closed its side: taken as leaving (as most servers do), so a request
        # in flight is cancelled and the replica stops working on it
        return False

    # -- llhttp callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_open = True
        self._head_began = True
        self._head_seen = 0
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_line_size:
            self._refuse(400, f"the request line is longer than {self.limits.max_line_size} "
                              "bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name) + len(value)
        headers = self._headers
        headers.append((name, value))
        self._head_bytes += n
        lim = self.limits
        if (n > lim.max_field_size or len(headers) > lim.max_headers
                or self._head_bytes > lim.max_head_bytes):  # one test on the request path
            self._over_limit(n, len(headers))

    def _over_limit(self, n: int, count: int) -> None:
        """A header went over a limit: which one, in this order."""
        lim = self.limits
        if n > lim.max_field_size:
            self._refuse(400, f"a header line is longer than {lim.max_field_size} bytes")
        if count > lim.max_headers:
            self._refuse(400, f"more than {lim.max_headers} headers")
        self._refuse(431, f"request headers are larger than the limit of "
                          f"{lim.max_head_bytes} bytes", "headers_too_large")

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._limit = 0  # _cancel_timer(), inline here and below (a call less a request)
        p = self.parser
        length = None
        expect = connection = False
        ctype = rid = None
        headers = self._headers
        for k, v in headers:
            kl = k.lower()
            if kl == b"content-length":
                length = int(v)
            elif kl == b"content-type":
                if ctype is None:
                    ctype = v
            elif kl == b"x-request-id":
                if rid is None:
                    rid = v
            elif kl == b"expect" and v.lower() == b"100-continue":
                expect = True
            elif kl == b"connection" or kl == b"proxy-connection":
                connection = True
        limit = self.host.max_body
        if length is not None and length > limit:
            self._refuse(413, f"request body is larger than the limit of {limit} bytes",
                         "request_too_large", "invalid_request_error")
        method = p.get_method().decode("latin-1")
        keep = p.should_keep_alive()
        # llhttp keeps alive with no Connection header only HTTP/1.1 (0.9, 1.0 and 2.0 need
        # "keep-alive"): known without get_http_version(), which formats a string (~0.2 us)
        version = "1.1" if keep and not connection else p.get_http_version()
        self._req = Request(self, method, self._url.decode("latin-1"), headers, version, keep,
                            ctype, rid)
        if expect and self.current is None and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._in_body = True  # data_received arms the body's timer if it is still due

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        limit = self.host.max_body
        if self._body_size > limit:
            self._refuse(413, f"request body is larger than the limit of {limit} bytes",
                         "request_too_large", "invalid_request_error")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._limit = 0
        req = self._req
        body = self._body
        req.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        if self.current is None:
            self._run(req)
        else:
            self.pending.append(req)
            if len(self.pending) >= MAX_PIPELINED and self.transport is not None:
                self.transport.pause_reading()
                self.reading_paused = True

    # -- keep-alive and pipelining ----------------------------------------------------------

    def _next(self) -> None:
        req = self.current
        self.current = None
        if self.closing or self.transport is None:
            return
        if req is not None and not req.keep_alive:
            self.transport.close()
            self.closing = True
            return
        if self.pending:
            self._run(self.pending.popleft())
            if self.reading_paused and len(self.pending) < MAX_PIPELINED:
                self.transport.resume_reading()
                self.reading_paused = False
            return
        if self.reading_paused:
            self.transport.resume_reading()
            self.reading_paused = False
        if not self._in_body:  # the body has its own timer; a head must come within idle
            self._arm(IDLE, self.limits.idle_timeout)

    # -- limits -----------------------------------------------------------------------------

    def _idle(self) -> None:
        self._arm(IDLE, self.limits.idle_timeout)

    def _arm(self, limit: int, seconds: float) -> None:
        """limit's deadline is `seconds` from now (it replaces any other)."""
        loop = self.loop
        at = loop.time() + seconds
        self._limit = limit
        self._limit_at = at
        t = self._timer
        if t is None or self._timer_at > at:  # none waiting, or it would wake too late
            if t is not None:
                t.cancel()
            self._timer = loop.call_later(seconds, self._fire)
            self._timer_at = at

    def _fire(self) -> None:
        self._timer = None
        limit = self._limit
        if limit == 0:
            return
        left = self._limit_at - self.loop.time()
        if left > 0.0:  # the deadline moved on since the timer was armed: wait for it
            self._timer = self.loop.call_later(left, self._fire)
            self._timer_at = self._limit_at
            return
        self._limit = 0
        if limit == IDLE:
            self._idle_timeout()
        else:
            self._body_too_slow()

    def _idle_timeout(self) -> None:
        if self.current is None and not self.pending and self.transport is not None:
            self.closing = True
            self.transport.close()  # idle, or a head that never finished arriving

    def _body_too_slow(self) -> None:
        if self._in_body:
            t = self.limits.body_timeout
            self._reject(408, f"the request body did not arrive within {t:g} s",
                         "request_timeout", "invalid_request_error")

    def _cancel_timer(self) -> None:
        """No limit runs now (the timer, if armed, wakes up to nothing)."""
        self._limit = 0

    def _drop_timer(self) -> None:
        self._limit = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: int, message: str, code: str = "bad_request",
                type_: str = "invalid_request_error") -> None:
        """From inside a parser callback: answer, close, and stop parsing."""
        self._reject(status, message, code, type_)
        raise _Refused

    def _reject(self, status: int, message: str, code: str = "bad_request",
                type_: str = "invalid_request_error") -> None:
        """Answer an unusable request and close the connection (what follows it on the
        connection cannot be trusted to be framed right). A response under way to an
        earlier request is cut instead: there is no way to answer in turn."""
        t = self.transport
        if t is None or self.closing:
            return
        self._drop_timer()
        self.closing = True
        if self.current is not None:
            self.current.keep_alive = False
            if self.current.task is not None:
                self.current.task.cancel()
            t.abort()
            return
        log.debug("refused a request from a client: %d %s", status, message)
        body = errors.body(message, type_, code)
        head = self._head(status, [(b"Content-Type", b"application/json")], False)
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        t.write(b"".join(head) + body)
        t.close()


class _Refused(Exception):
    pass
