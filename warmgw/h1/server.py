"""The user-facing HTTP/1.1 server: an asyncio protocol around llhttp (httptools).

The request path is the gateway's hot loop, and a general web framework spends most of a
proxied request's CPU on itself (aiohttp's server measured about 200 us of the ~300 us a
minimal aiohttp proxy spends per request here; see docs/benchmarks.md). This server does
what the proxy needs and no more: one request at a time per connection (pipelined ones
wait their turn), the whole body read before the handler runs, responses written whole or
as chunks with backpressure, and the client limits (ClientLimits) enforced as the bytes
arrive.

It is in three parts, like uvicorn's HttpToolsProtocol and RequestResponseCycle:
- warmgw.h1.protocol: reading, framing, keep-alive and pipelining, the client limits
  (head size, lines, header count, body size and time, idle time, connection count);
  sans-IO, tested by feeding it bytes (tests/test_h1_protocol.py),
- warmgw.h1.cycle: the Request handed to the handler and the Connection it answers
  through (respond, or start/write/end), the 500 for a request left unanswered, the
  handler cancelled when the client leaves, a client that stops reading cut,
- here: the Server, which listens, counts its connections and stops gracefully.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import Any

from warmgw.config import ClientLimits
from warmgw.h1.cycle import Connection, Handler, Request
from warmgw.h1.protocol import HttpProtocol

__all__ = ["Connection", "Handler", "Request", "Server"]


class Server:
    """Listens and keeps its connections, for counting and a graceful stop. Its
    connections take their timers and tasks from loop (the running loop unless given)."""

    def __init__(self, handler: Handler, limits: ClientLimits, max_body: int,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.max_body = max_body
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.connections: set[HttpProtocol] = set()
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
            lambda: HttpProtocol(self), host, port, reuse_address=True, backlog=1024
        )
        # a list in uvloop, a tuple in typeshed: read untyped, or mypyc checks for a tuple
        socks: Any = getattr(self._server, "sockets")  # noqa: B009
        return int(socks[0].getsockname()[1])

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
