"""The user-facing HTTP/1.1 server: an asyncio protocol around llhttp (httptools).

The request path is the gateway's hot loop, and a general web framework spends most of a
proxied request's CPU on itself (aiohttp's server measured about 200 us of the ~300 us a
minimal aiohttp proxy spends per request here; see docs/benchmarks.md). This server does
what the proxy needs and no more: one request at a time per connection (pipelined ones
wait their turn), the whole body read before the handler runs, responses written whole or
as chunks with backpressure, and the client limits (ClientLimits) enforced as the bytes
arrive:

- the request head must arrive within idle_timeout (also the keep-alive idle bound),
- header lines, the request line, the number of headers, and their total size are capped
  (400, or 431 for the total, never forwarded), llhttp rejects ambiguous framing,
- the body must arrive within body_timeout (408, connection closed) and fit max_body
  bytes (413, connection closed, with or without Content-Length),
- a client that leaves cancels its handler, so the replica's work is cancelled too,
- a client that stops reading a response is cut after write_timeout (see _Stall),
- at most max_connections client connections are open at once (503 for one more).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import struct
import termios
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools

from warmgw import errors
from warmgw.config import ClientLimits

log = logging.getLogger("warmgw.server")

MAX_PIPELINED = 8  # complete requests queued behind the running one before reading pauses
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Request:
    __slots__ = ("body", "conn", "headers", "keep_alive", "method", "path", "target", "task",
                 "version")

    def __init__(self, conn: Connection, method: str, target: str,
                 headers: list[tuple[bytes, bytes]], version: str) -> None:
        self.conn = conn
        self.method = method
        self.target = target  # path and query, as sent
        q = target.find("?")
        self.path = target if q < 0 else target[:q]
        self.headers = headers  # as received (bytes): passed on without decoding
        self.version = version
        self.keep_alive = True
        self.body = b""
        self.task: asyncio.Task[None] | None = None

    def get(self, name: bytes) -> str | None:
        """The first header of that (lower-case) name, compared without case."""
        for k, v in self.headers:
            if k.lower() == name:
                return v.decode("latin-1")
        return None


Handler = Callable[[Request], Awaitable[None]]


class Connection(asyncio.Protocol):
    """One client connection. The handler answers through respond() or start()/write()/
    end(); whatever it leaves unanswered gets a 500."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closing = False
        self.pending: collections.deque[Request] = collections.deque()
        self.current: Request | None = None
        self.reading_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_body = False
        self._answered = False  # the current response has begun
        # bytes received while a request head is incomplete (bounded: see data_received)
        self._head_open = False
        self._head_began = False
        self._head_seen = 0
        lim = self.limits
        self._head_cap = lim.max_head_bytes + lim.max_line_size + 2 * lim.max_headers + 4096
        self._chunked = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        if len(self.server.connections) >= self.limits.max_connections:
            self.server.refused += 1
            if self.server.refused % 1000 == 1:  # the first, then every 1000th
                log.warning("client connections at the limit of %d: turned away %d so far "
                            "(clients.max_connections)", self.limits.max_connections,
                            self.server.refused)
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
        self.server.connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        self._cancel_timer()
        if self.current is not None and self.current.task is not None:
            self.current.task.cancel()  # the client left: its request is dropped upstream
        self.pending.clear()
        d = self._drain
        if d is not None and not d.done():
            d.set_exception(ConnectionResetError("the client closed the connection"))

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

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)

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
        lim = self.limits
        if len(name) + len(value) > lim.max_field_size:
            self._refuse(400, f"a header line is longer than {lim.max_field_size} bytes")
        self._headers.append((name, value))
        if len(self._headers) > lim.max_headers:
            self._refuse(400, f"more than {lim.max_headers} headers")
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > lim.max_head_bytes:
            self._refuse(431, f"request headers are larger than the limit of "
                              f"{lim.max_head_bytes} bytes", "headers_too_large")

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._cancel_timer()
        p = self.parser
        length = None
        expect = False
        headers = self._headers
        for k, v in headers:
            kl = k.lower()
            if kl == b"content-length":
                length = int(v)
            elif kl == b"expect" and v.lower() == b"100-continue":
                expect = True
        limit = self.server.max_body
        if length is not None and length > limit:
            self._refuse(413, f"request body is larger than the limit of {limit} bytes",
                         "request_too_large", "invalid_request_error")
        method = p.get_method().decode("latin-1")
        req = Request(self, method, self._url.decode("latin-1"), headers,
                      p.get_http_version())
        req.keep_alive = p.should_keep_alive()
        self._req = req
        if expect and self.current is None and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._in_body = True
        self._timer = self.loop.call_later(self.limits.body_timeout, self._body_too_slow)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        limit = self.server.max_body
        if self._body_size > limit:
            self._refuse(413, f"request body is larger than the limit of {limit} bytes",
                         "request_too_large", "invalid_request_error")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel_timer()
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

    # -- requests ---------------------------------------------------------------------------

    def _run(self, req: Request) -> None:
        self.current = req
        self._answered = False
        req.task = self.loop.create_task(self._handle(req))

    async def _handle(self, req: Request) -> None:
        try:
            await self.server.handler(req)
        except asyncio.CancelledError:
            self.abort()
            raise
        except Exception:
            log.exception("error handling %s %s", req.method, req.path)
            if self._answered:
                self.abort()  # a response under way cannot be finished
        if not self._answered and not self.closing:
            self.respond(500, [(b"Content-Type", b"application/json")],
                         errors.body("internal error in the gateway", "internal_error"))
        self._next()

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
            self._idle()

    # -- answering --------------------------------------------------------------------------

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                close: bool = False) -> None:
        """A whole response in one write."""
        req = self.current
        t = self.transport
        if t is None or self.closing:
            return
        self._answered = True
        keep = req is not None and req.keep_alive and not close and not self.server.stopping
        if req is not None and not keep:
            req.keep_alive = False
        head = self._head(status, headers, keep)
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        if req is None or req.method != "HEAD":
            head.append(body)
        t.write(b"".join(head))

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Begin a response whose body follows in write() calls: chunked for HTTP/1.1
        clients, until the connection closes for HTTP/1.0 ones."""
        req = self.current
        t = self.transport
        if t is None or self.closing:
            raise ConnectionResetError("the client closed the connection")
        self._answered = True
        chunked = req is None or req.version != "1.0"
        keep = req is not None and req.keep_alive and chunked and not self.server.stopping
        if req is not None and not keep:
            req.keep_alive = False
        self._chunked = chunked
        head = self._head(status, headers, keep)
        head.append(b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n")
        t.write(b"".join(head))

    async def write(self, data: bytes) -> None:
        t = self.transport
        if t is None or self.closing:
            raise ConnectionResetError("the client closed the connection")
        if self._chunked:
            t.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            t.write(data)
        if self._write_paused:
            d = self._drain = self.loop.create_future()
            stall = _Stall(self)
            try:
                await d
            finally:
                self._drain = None
                stall.stop()

    def end(self) -> None:
        t = self.transport
        if t is None or self.closing:
            raise ConnectionResetError("the client closed the connection")
        if self._chunked:
            t.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Drop the connection without a word (a body that cannot be finished)."""
        self.closing = True
        if self.current is not None:
            self.current.keep_alive = False
        if self.transport is not None:
            self.transport.abort()

    def _head(self, status: int, headers: list[tuple[bytes, bytes]],
              keep: bool) -> list[bytes]:
        reason = REASONS.get(status, b"Unknown")
        out = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
        for k, v in headers:
            out.append(b"%b: %b\r\n" % (k, v))
        out.append(self.server.date_line())
        if not keep:
            out.append(b"Connection: close\r\n")
        return out

    # -- limits -----------------------------------------------------------------------------

    def _idle(self) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(self.limits.idle_timeout, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self._timer = None
        if self.current is None and not self.pending and self.transport is not None:
            self.closing = True
            self.transport.close()  # idle, or a head that never finished arriving

    def _body_too_slow(self) -> None:
        self._timer = None
        if self._in_body:
            t = self.limits.body_timeout
            self._reject(408, f"the request body did not arrive within {t:g} s",
                         "request_timeout", "invalid_request_error")

    def _cancel_timer(self) -> None:
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
        self._cancel_timer()
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


class _Stall:
    """Watches a write that waits for the client's socket to drain, and cuts the
    connection when nothing of what is queued for the client (the transport's buffer and
    the kernel's send queue) has gone out for clients.write_timeout. Without it a client
    that stops reading a stream would hold the handler, the upstream connection and the
    replica's generation for as long as the replica produces. A slow reader is not cut:
    its queue keeps shrinking. Only a write that has to wait starts one."""

    __slots__ = ("conn", "queued", "since", "timeout", "timer")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.timeout = conn.limits.write_timeout
        self.since = conn.loop.time()  # when the queue last shrank (or the wait began)
        self.queued = _queued(conn.transport) if conn.transport is not None else 0
        self.timer: asyncio.TimerHandle | None = conn.loop.call_later(
            self.timeout / 2, self._check)

    def _check(self) -> None:
        conn = self.conn
        transport = conn.transport
        if transport is None or conn.closing:
            self.timer = None
            return
        now = conn.loop.time()
        queued = _queued(transport)
        if queued < self.queued:
            self.since = now
        self.queued = queued
        if now - self.since >= self.timeout:
            log.info("a client read nothing for %.1f s (%d bytes queued for it): "
                     "connection cut", now - self.since, queued)
            self.timer = None
            transport.abort()  # the pending write raises ConnectionResetError
            return
        self.timer = conn.loop.call_later(self.timeout / 2, self._check)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _queued(transport: asyncio.Transport) -> int:
    """Bytes written for the client and not yet taken by it: the transport's buffer and
    the kernel's send queue (SIOCOUTQ)."""
    n = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        except OSError:
            pass
    return n


class Server:
    """Listens and keeps its connections, for counting and a graceful stop."""

    def __init__(self, handler: Handler, limits: ClientLimits, max_body: int) -> None:
        self.handler = handler
        self.limits = limits
        self.max_body = max_body
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.refused = 0  # connections turned away over limits.max_connections
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None
        self._date = b""
        self._date_at = -1

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date

    async def listen(self, host: str, port: int) -> int:
        self._server = await self.loop.create_server(
            lambda: Connection(self), host, port, reuse_address=True, backlog=1024
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, timeout: float) -> None:
        """Stop accepting; close idle connections; give requests in flight up to timeout
        to finish (no new request is taken meanwhile), then close the rest."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + timeout
        while True:
            busy = []
            for c in list(self.connections):
                if c.current is None and not c.pending:
                    if c.transport is not None:
                        c.closing = True
                        c.transport.close()
                    self.connections.discard(c)
                else:
                    busy.append(c)
            if not busy or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            if c.current is not None and c.current.task is not None:
                c.current.task.cancel()
            if c.transport is not None:
                c.transport.abort()
        self.connections.clear()
        if self._server is not None:
            await self._server.wait_closed()
