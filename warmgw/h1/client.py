"""The upstream side: HTTP/1.1 to the replicas, one connection (Response) each, kept by
warmgw.h1.pool.Pool.

A request either is not taken (the connection could not be made: `NotConnected`, safe to try
another replica) or is taken, after which anything that goes wrong (a reset, an early close,
broken HTTP, no byte within read_timeout) is a `Cut`. A Cut before any byte of the answer
came back, not by a timeout, is `unanswered` (the proxy may send it once more); any other
Cut is final. A response's body is read whole (read(), woken at its end only) or handed
to a relay as each read brings it (relayed(): a stream passed on with no wake-up of the
reader a piece; reading pauses while the relay's client is full). Waiting for the replica
resumes reading: the read timeout counts from there.

A connection has one lazy timer for its two limits (the read timeout while a response is
due, the pool's keep-alive bound while it is idle): a limit moves a deadline, the timer is
armed again only for a deadline nearer than the one it waits for, and when it fires it looks
at the deadline and waits again if that has moved. Making and cancelling a timer handle for
each limit of each request cost about 3 us of CPU a request.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from warmgw.h1.failures import Cut

READ, IDLE = 1, 2  # the limits a connection's timer keeps

# takes each piece of a body as it comes (and whether it is the last): True when whoever
# it passes them to cannot take more now (reading pauses until relayed() is awaited again)
Relay = Callable[[bytes, bool], bool]


class Owner(Protocol):
    """What a connection takes from its pool (warmgw.h1.pool.Pool)."""

    loop: asyncio.AbstractEventLoop

    def keep(self, conn: Response) -> None: ...

    def expire(self, conn: Response) -> None: ...

    def forget(self, conn: Response) -> None: ...


class Response(asyncio.Protocol):
    """One connection to a replica, and the response being read on it."""

    def __init__(self, pool: Owner, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.answered = False  # a byte of the current response came back
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: int | None = None
        self.content_type = b""
        self.keep_alive = False
        self.head_only = False
        self._chunks: list[bytes] = []  # never replaced: emptied in place (on_body)
        # llhttp's body callback (per chunk): a C call, not a method; data_received does the rest
        self.on_body = self._chunks.append
        self.relay: Relay | None = None  # set: the body goes there as it comes (relayed())
        self._parser = httptools.HttpResponseParser(self)
        self._stale = False  # the parser saw a response begin after the last one's end
        self._paused = False
        self._headed = False
        self.done = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._last = 0.0  # when a byte last came (or the request went out)
        self._read_timeout = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when it fires
        self._limit = 0  # READ, IDLE or 0 (none)
        self._idle_until = 0.0  # IDLE's deadline (READ's is _last + _read_timeout)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._last = self.loop.time()
        self.answered = True
        chunks = self._chunks
        had = len(chunks)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(Cut(f"broken HTTP from the replica: {e}"))
            if self.transport is not None:
                self.transport.abort()
            return
        # body came (on_body): a relay takes it at once (no wake-up); else it waits for
        # read(), which on_message_complete wakes
        if len(chunks) > had and self.relay is not None:
            if self.relay(self.take(), self.done) and not self.done:
                self._pause()  # its client is slow: the task drains it, then reads on
                self._wake()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        idle = self._limit == IDLE
        self.drop_timer()
        if idle:
            self.pool.forget(self)
        if not self.done:
            why = str(exc) if exc else "the replica closed the connection"
            self._fail(Cut(why or type(exc).__name__, unanswered=not self.answered))

    # -- llhttp callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:  # bytes after a whole response (a broken replica)
            self._stale = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._parser
        self.status = p.get_status_code()
        for k, v in self.headers:
            kl = k.lower()
            if kl == b"content-length":
                self.length = int(v)
            elif kl == b"content-type":
                self.content_type = v
        self.keep_alive = p.should_keep_alive()
        self._headed = True
        if self.head_only:  # a response to HEAD has no body, whatever it announces
            self.done = True
            self.keep_alive = False
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self._stop_watch()
        self._wake()

    # -- reading ----------------------------------------------------------------------------

    def send(self, data: bytes, head_only: bool, read_timeout: float) -> None:
        assert self.transport is not None
        self.head_only = head_only
        now = self._last = self.loop.time()
        self._read_timeout = read_timeout
        self._limit = READ
        self.arm(now + read_timeout)
        self.transport.write(data)

    def take(self) -> bytes:
        """What came of the body and was not taken yet, without waiting (b"": nothing)."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data

    async def relayed(self) -> None:
        """With a relay set: until the body's end, or until the relay could not take more
        (reading paused: drain its client, then await this again). Not a wake-up a piece."""
        while not self.done:
            await self._wait()  # resumes reading if it was paused
            self._check()
            if self._paused:
                return

    async def read(self) -> bytes:
        """The whole body, at its end (reading never pauses for it: nothing of it is taken
        before)."""
        while not self.done:
            await self._wait()
            self._check()
        return self.take()

    def _wait(self) -> asyncio.Future[None]:
        """To await for the next event (_wake), then _check(): not a coroutine (a frame).
        Whoever waits waits for the replica: reading goes on (and its timeout with it)."""
        if self._error is not None:
            raise self._error
        if self._paused:
            self._resume()
        fut = self._waiter = self.loop.create_future()
        return fut

    def _check(self) -> None:
        if self._error is not None and not (self.done and self._headed):
            raise self._error

    def _pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def _resume(self) -> None:
        """Read again after a pause, which was the client's time: the read timeout counts
        from now."""
        self._paused = False
        if self.transport is not None and not self.lost:
            self._last = self.loop.time()
            self.transport.resume_reading()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():  # it may be cancelled
                w.set_result(None)

    def _fail(self, e: Exception) -> None:
        if self._error is None:
            self._error = e
        self._wake()

    # -- the timer --------------------------------------------------------------------------

    def arm(self, at: float) -> None:
        """The current limit's deadline is `at` (loop time)."""
        t = self._timer
        if t is None or self._timer_at > at:  # none waiting, or it would wake too late
            if t is not None:
                t.cancel()
            loop = self.loop
            self._timer = loop.call_later(at - loop.time(), self._fire)
            self._timer_at = at

    def _fire(self) -> None:
        self._timer = None
        limit = self._limit
        if limit == 0 or self.lost:
            return
        now = self.loop.time()
        if limit == IDLE:
            if now < self._idle_until:
                self.arm(self._idle_until)
            else:
                self._limit = 0
                self.pool.expire(self)
            return
        if self.done:
            return
        timeout = self._read_timeout
        quiet = now - self._last
        # paused: nobody waits for the replica (_wait resumes), the proxy waits for a slow
        # client to take a stream (cut after clients.write_timeout if it takes nothing)
        if quiet >= timeout and not self._paused:
            self._limit = 0
            self._fail(Cut("no bytes within the read timeout", timeout=True))
            if self.transport is not None:
                self.transport.abort()
            return
        self.arm(now + (max(timeout - quiet, 0.05) if not self._paused else timeout))

    def _stop_watch(self) -> None:
        if self._limit == READ:
            self._limit = 0

    def idle(self, until: float) -> None:
        """In the pool until `until` at the latest."""
        self._limit = IDLE
        self._idle_until = until
        self.arm(until)

    def reused(self) -> None:
        if self._limit == IDLE:
            self._limit = 0

    def drop_timer(self) -> None:
        self._limit = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- after ------------------------------------------------------------------------------

    def release(self) -> None:
        """Back to the pool if the response was read to its end and the connection may be
        kept; closed otherwise (which tells the replica to stop a generation)."""
        self._stop_watch()
        t = self.transport
        if t is None or self.lost:
            return
        if self.done and self.keep_alive and self._error is None and not self._chunks:
            self.pool.keep(self)
        else:
            self.lost = True
            t.abort() if not self.done else t.close()

    def reset_for_reuse(self) -> None:
        self.answered = False
        self.status = 0
        self.headers = []
        self.length = None
        self.content_type = b""
        self.keep_alive = False
        if self._stale:  # else llhttp is ready for the next response (a new one: ~0.3 us)
            self._parser = httptools.HttpResponseParser(self)
            self._stale = False
        self._chunks.clear()
        self.relay = None
        self._headed = False
        self.done = False
        self._error = None
