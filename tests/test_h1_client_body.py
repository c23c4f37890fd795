"""The upstream Response's body bookkeeping: llhttp appends each piece straight to the
chunk list, and data_received accounts for a read's pieces at once (read-ahead pause,
waking a reader)."""

from __future__ import annotations

import asyncio

import pytest

from warmgw.h1.client import READ_AHEAD, Response
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
async def test_pieces_over_the_read_ahead_pause_reading_until_taken() -> None:
    r, t = response()
    piece = b"x" * (READ_AHEAD // 4)
    r.data_received(HEAD + chunk(piece) + chunk(piece))
    assert t.paused == 0
    r.data_received(chunk(piece) + chunk(piece) + chunk(b"y"))  # READ_AHEAD + 1 buffered
    assert t.paused == 1
    assert r.take() == piece * 4 + b"y"
    assert t.resumed == 1
    r.data_received(chunk(b"z") + b"0\r\n\r\n")
    assert r.done and r.take() == b"z"
    r.drop_timer()


@pytest.mark.asyncio
async def test_a_piece_wakes_a_reader_and_the_list_is_reused() -> None:
    r, _ = response()
    r.data_received(HEAD)
    reader = asyncio.ensure_future(r.chunk())
    await asyncio.sleep(0)
    assert not reader.done()
    r.data_received(chunk(b"a") + chunk(b"b"))
    assert await asyncio.wait_for(reader, 1.0) == b"ab"
    r.data_received(chunk(b"c") + b"0\r\n\r\n")  # the end with it: taken whole
    assert r.done and await r.chunk() == b"c" and await r.chunk() == b""
    r.reset_for_reuse()
    r.send(b"GET / HTTP/1.1\r\n\r\n", False, 30.0)
    r.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert r.done and r.take() == b"abc"
    r.drop_timer()
