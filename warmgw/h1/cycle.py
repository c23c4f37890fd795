"""The answering half of a client connection: the request handed to the handler, and the
response written back.

The handler gets one Request at a time per connection, its whole body already read, and
answers through the connection: respond() for a whole response in one write, or start(),
write()s and end() for a stream (chunked for HTTP/1.1 clients, until the connection closes
for HTTP/1.0 ones), with backpressure. Whatever it leaves unanswered gets a 500; a client
that leaves cancels the handler, so the replica's work is cancelled too; a client that
stops reading a response is cut after write_timeout (see _Stall).

Reading, framing, the client limits and the order of pipelined requests are the
protocol's (warmgw.h1.protocol.HttpProtocol, a subclass): one object per connection, so
the request path takes no hop between the two halves.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import termios
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Protocol

from warmgw import errors
from warmgw.config import ClientLimits

log = logging.getLogger("warmgw.server")

STATUS_LINES = {s.value: b"HTTP/1.1 %d %b\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


class Host(Protocol):
    """What a connection's request cycle takes from the server that accepted it
    (warmgw.h1.server.Server)."""

    limits: ClientLimits
    loop: asyncio.AbstractEventLoop
    stopping: bool

    @property
    def handler(self) -> Handler: ...

    def date_line(self) -> bytes: ...


class Request:
    __slots__ = ("body", "conn", "ctype", "headers", "keep_alive", "method", "path", "rid",
                 "target", "task", "version")

    def __init__(self, conn: Connection, method: str, target: str,
                 headers: list[tuple[bytes, bytes]], version: str, keep_alive: bool = True,
                 ctype: bytes | None = None, rid: bytes | None = None) -> None:
        self.conn = conn
        self.method = method
        self.target = target  # path and query, as sent
        q = target.find("?")
        self.path = target if q < 0 else target[:q]
        self.headers = headers  # as received (bytes): passed on without decoding
        # the first Content-Type and X-Request-Id, found as the head was parsed
        self.ctype = ctype
        self.rid = rid
        self.version = version
        self.keep_alive = keep_alive
        self.body = b""
        self.task: asyncio.Task[None] | None = None

    def get(self, name: bytes) -> str | None:
        """The first header of that (lower-case) name, compared without case."""
        for k, v in self.headers:
            if k.lower() == name:
                return v.decode("latin-1")
        return None


# answers the request, through an awaitable or at once (None)
Handler = Callable[[Request], Awaitable[None] | None]


class Connection(asyncio.Protocol):
    """One client connection, as the handler sees it. The handler answers through
    respond() or start()/write()/end(); whatever it leaves unanswered gets a 500.

    The protocol subclass calls _run() with each request in its turn; _next() is its
    answer to a request being done."""

    __slots__ = ("_answered", "_chunked", "_drain", "_ended", "_task", "_waiting",
                 "_write_paused", "closing", "current", "limits", "loop", "server", "transport")

    def __init__(self, server: Host) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.current: Request | None = None  # the request being answered
        self._answered = False  # the current response has begun
        self._chunked = False
        self._ended = False  # the last chunk went out
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._task: asyncio.Task[None] | None = None  # answers the requests (_serve)
        self._waiting: asyncio.Future[None] | None = None  # what it waits on between them

    # -- asyncio.Protocol: the write side ---------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self._task is not None:
            self._task.cancel()  # the client left: its request is dropped upstream
        d = self._drain
        if d is not None and not d.done():
            d.set_exception(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)

    # -- requests ---------------------------------------------------------------------------

    def _run(self, req: Request) -> None:
        """Answer req now: the connection's task takes it (one task a connection, not one
        a request: a keep-alive request saves making and finishing a Task, about 4 % of
        its CPU)."""
        self.current = req
        self._answered = False
        waiting = self._waiting
        if waiting is not None:  # the task waits for a request
            self._waiting = None
            waiting.set_result(None)
        elif self._task is None:
            self._task = self.loop.create_task(self._serve())
        # else the task is running: called from it (_next), it goes on with req
        req.task = self._task

    async def _serve(self) -> None:
        """The connection's task: its requests one after the other, until it closes. A
        request cancelled (the client left, or a drain deadline) cuts the connection and
        ends the task, as does the connection's end (connection_lost)."""
        try:
            while True:
                req = self.current
                if req is None:
                    if self.closing:
                        return
                    waiting = self._waiting = self.loop.create_future()
                    await waiting
                    continue
                try:
                    answer = self.server.handler(req)
                    if answer is not None:
                        await answer
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
        finally:
            self._task = None
            self._waiting = None

    def _next(self) -> None:
        """The current request is done: take the next one, wait for one, or close."""
        raise NotImplementedError

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

    def start(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"",
              end: bool = False) -> None:
        """Begin a response whose body follows in send()/write() calls: chunked for
        HTTP/1.1 clients, until the connection closes for HTTP/1.0 ones. body: its first
        piece, and end: its last, in the same write as the head (a syscall less)."""
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
        self._ended = False
        head = self._head(status, headers, keep)
        head.append(b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n")
        t.write(b"".join(head) + self._piece(body, end))

    async def write(self, data: bytes) -> None:
        if self.send(data):
            await self.drain()

    def send(self, data: bytes, end: bool = False) -> bool:
        """write() without the wait: True when the client's socket is full, and drain()
        is to be awaited before the next piece (a stream's chunk makes no coroutine).
        end: data is the last piece (the end of the body goes in the same write)."""
        t = self.transport
        if t is None or self.closing:
            raise ConnectionResetError("the client closed the connection")
        t.write(self._piece(data, end))
        return self._write_paused

    def _piece(self, data: bytes, end: bool) -> bytes:
        if not self._chunked:
            return data
        out = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        if end:
            self._ended = True
            out += b"0\r\n\r\n"
        return out

    async def drain(self) -> None:
        """Until the client's socket takes more (or the client is cut: _Stall)."""
        if not self._write_paused:
            return
        d = self._drain = self.loop.create_future()
        stall = _Stall(self)
        try:
            await d
        finally:
            self._drain = None
            stall.stop()

    def end(self) -> None:
        """The end of the body, unless it went with the last piece (send(end=True))."""
        t = self.transport
        if t is None or self.closing:
            raise ConnectionResetError("the client closed the connection")
        if self._chunked and not self._ended:
            self._ended = True
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
        line = STATUS_LINES.get(status)
        out = [line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status]
        for k, v in headers:
            out += (k, b": ", v, b"\r\n")  # joined once: cheaper than b"%b: %b\r\n" % (k, v)
        out.append(self.server.date_line())
        if not keep:
            out.append(b"Connection: close\r\n")
        return out


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
            transport.abort()  # connection_lost follows: the handler and its write cancelled
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
