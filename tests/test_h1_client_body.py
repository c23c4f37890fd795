"""The upstream Response's body bookkeeping: llhttp appends each piece straight to the
chunk list, and data_received hands a read's pieces to the relay at once (pausing while the
relay's client is full), or keeps them for read() without waking anyone."""

from __future__ import annotations

import asyncio

import pytest

from warmgw.h1.client import Response
from warmgw.h1.pool import Pool

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class FakeTransport:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def response() -> tuple[Response, FakeTransport]:
    r = Response(Pool(5.0, 30.0, 60.0), ("127.0.0.1", 1))
    t = FakeTransport()
    r.transport = t  # type: ignore[assignment]
    r.send(b"GET / HTTP/1.1\r\n\r\n", False, 30.0)
    return r, t


@pytest.mark.asyncio
async def test_a_read_s_pieces_go_to_the_relay_at_once_and_a_full_client_pauses_reading(
) -> None:
    r, t = response()
    r.data_received(HEAD)
    got: list[tuple[bytes, bool]] = []
    full = False

    def relay(data: bytes, end: bool) -> bool:
        got.append((data, end))
        return full

    r.relay = relay
    waiter = asyncio.ensure_future(r.relayed())
    await asyncio.sleep(0)
    r.data_received(chunk(b"a") + chunk(b"b"))  # one read, one piece for the relay
    await asyncio.sleep(0)
    assert got == [(b"ab", False)] and not waiter.done() and t.paused == 0  # no wake-up
    full = True
    r.data_received(chunk(b"c"))
    assert t.paused == 1
    await asyncio.wait_for(waiter, 1.0)  # woken: its client is full
    full = False
    waiter = asyncio.ensure_future(r.relayed())
    await asyncio.sleep(0)
    assert t.resumed == 1  # awaited again: reading goes on
    r.data_received(chunk(b"d") + b"0\r\n\r\n")  # the end with the last piece
    await asyncio.wait_for(waiter, 1.0)
    assert r.done and got[-1] == (b"d", True) and r.take() == b""
    r.drop_timer()


@pytest.mark.asyncio
async def test_without_a_relay_the_body_waits_for_read_and_the_list_is_reused() -> None:
    r, _ = response()
    r.data_received(HEAD)
    reader = asyncio.ensure_future(r.read())
    await asyncio.sleep(0)
    r.data_received(chunk(b"a") + chunk(b"b"))
    await asyncio.sleep(0)
    assert not reader.done()  # pieces do not wake it: the end does
    r.data_received(chunk(b"c") + b"0\r\n\r\n")
    assert await asyncio.wait_for(reader, 1.0) == b"abc"
    r.reset_for_reuse()
    r.send(b"GET / HTTP/1.1\r\n\r\n", False, 30.0)
    r.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert r.done and r.take() == b"abc"
    r.drop_timer()
