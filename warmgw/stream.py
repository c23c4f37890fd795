"""A streamed response passed through to the client as it comes (proxy.Proxy._forward).

Each read from the replica is written to the client from the read's own callback
(Response.relay, here _Relay.piece): the forwarding task wakes at the stream's end, when the
client's socket is full (it drains the client, with the server's write_timeout, and reading
from the replica goes on), or when either side fails, not once a piece, as vllm-router or
Envoy do not. A replica that fails mid-stream ends an SSE stream with an error event.
"""

from __future__ import annotations

import logging

from warmgw import errors
from warmgw.core.facts import cached_tokens_of, prompt_tokens_of
from warmgw.core.routing import Failure, Ticket
from warmgw.h1.client import Response
from warmgw.h1.cycle import Connection
from warmgw.h1.failures import Cut

log = logging.getLogger("warmgw.proxy")


async def stream(conn: Connection, ticket: Ticket, up: Response,
                 out: list[tuple[bytes, bytes]]) -> None:
    """Pass the body through as it comes: each read from the replica is written to the
    client from the read's own callback (_Relay), and this task wakes only at the end,
    when the client's socket is full, or when either side fails. Errors writing to the
    client are the client's (it left: 499); errors reading from the replica count
    against it."""
    sse = up.content_type.startswith(b"text/event-stream")
    # what of the body came with the head goes out with it, and the body's end with its
    # last piece: one write to the client for what came in one read
    last = up.take()
    ended = up.done  # (read right after a take: nothing is left to come)
    if last:
        ticket.first_byte()
    try:
        conn.start(up.status, out, last, ended)
    except ConnectionResetError:
        ticket.left()
        return
    if not ended:
        relay = _Relay(conn, ticket, last)
        up.relay = relay.piece
        try:
            while not up.done:
                await up.relayed()
                if relay.left:
                    ticket.left()
                    return
                if not up.done:  # the client's socket is full: reading paused
                    await conn.drain()  # cut by the server if the client stops reading
        except Cut as e:
            return await _cut(conn, ticket, sse, relay.last or b"\n\n", e)
        except ConnectionResetError:  # the client left; leaving closes the upstream
            ticket.left()
            return
        finally:
            up.relay = None
        if relay.left:
            ticket.left()
            return
        last = relay.last
    try:
        conn.end()
    except ConnectionResetError:
        ticket.left()
        return
    ticket.complete(up.status, streamed=True, prompt_tokens=prompt_tokens_of(last),
                    cached_tokens=cached_tokens_of(last) if ticket.uncached >= 0 else -1)


async def _cut(conn: Connection, ticket: Ticket, sse: bool, last: bytes, e: Cut) -> None:
    """The replica failed after the response began. An SSE stream ends with an error
    event (its own event even if the replica stopped mid-event), so clients raise an
    error instead of taking a short answer for a whole one; any other body is cut off
    (no final chunk), which is how HTTP says the same."""
    ep = ticket.ep
    code = 504 if e.timeout else 502
    ticket.fail(Failure.TAKEN, f"stream cut: {e}", code)
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


class _Relay:
    """A stream's pieces from the replica's reads to the client (Response.relay): the
    first one marks the first byte, the last one seen is kept (its usage is the stream's),
    and a client that left stops it."""

    __slots__ = ("conn", "last", "left", "ticket")

    def __init__(self, conn: Connection, ticket: Ticket, last: bytes) -> None:
        self.conn = conn
        self.ticket = ticket
        self.last = last  # the last piece that went out (what came with the head, at first)
        self.left = False

    def piece(self, data: bytes, end: bool) -> bool:
        """Write one piece (end: and the body's end): True when the client's socket is
        full or the client is gone (the reading pauses and the task looks)."""
        if not self.last:
            self.ticket.first_byte()
        self.last = data
        try:
            return self.conn.send(data, end)
        except ConnectionResetError:
            self.left = True
            return True
