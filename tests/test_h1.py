"""warmgw.h1: the request path's HTTP/1.1 server and upstream client, over real sockets.

The gateway's behaviour through them is tested in test_proxy and tests/reliability; here
is what HTTP/1.1 asks of any server and client: pipelined requests answered in order,
HTTP/1.0 clients, keep-alive reuse, a failing handler, upstream connection reuse and
expiry, a replica that closes or resets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from warmgw.config import ClientLimits
from warmgw.h1.failures import Cut, NotConnected
from warmgw.h1.pool import Pool
from warmgw.h1.server import Request, Server

pytestmark = pytest.mark.timeout(30)


async def handler(req: Request) -> None:
    if req.path == "/boom":
        raise RuntimeError("a bug")
    if req.path == "/stream":
        req.conn.start(200, [(b"Content-Type", b"text/event-stream")])
        for i in range(3):
            await req.conn.write(b"data: %d\n\n" % i)
        req.conn.end()
        return
    req.conn.respond(200, [(b"Content-Type", b"text/plain")],
                     b"%s %s %d" % (req.method.encode(), req.target.encode(), len(req.body)))


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[Server, int]]:
    srv = Server(handler, ClientLimits(idle_timeout=2.0, body_timeout=1.0), 1024)
    port = await srv.listen("127.0.0.1", 0)
    yield srv, port
    await srv.stop(1.0)


async def talk(port: int, data: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    async with asyncio.timeout(5):
        out = await r.read()
    w.close()
    return out


async def test_pipelined_requests_are_answered_in_order(server):
    _, port = server
    out = await talk(port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                           b"POST /b?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                           b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
                           b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 4
    a, b, s, c = (out.index(x) for x in (b"GET /a 0", b"POST /b?q=1 3", b"data: 2",
                                           b"GET /c 0"))
    assert a < b < s < c
    assert b"Transfer-Encoding: chunked" in out and out.endswith(b"GET /c 0")


async def test_an_http_10_client_gets_a_stream_without_chunks_and_a_close(server):
    _, port = server
    out = await talk(port, b"GET /stream HTTP/1.0\r\n\r\n")
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_a_failing_handler_is_a_500_and_the_connection_serves_on(server):
    _, port = server
    out = await talk(port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n"
                           b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error")
    assert b"internal error in the gateway" in out and out.endswith(b"GET /after 0")


async def test_connections_are_counted_and_idle_ones_closed_at_stop(server):
    srv, port = server
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    await r.readuntil(b"GET /x 0")
    assert len(srv.connections) == 1
    await srv.stop(1.0)
    async with asyncio.timeout(2):
        assert await r.read() == b""  # closed by the server
    w.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# -- the upstream client --------------------------------------------------------------------


async def test_the_pool_reuses_a_connection_and_expires_it(server):
    _, port = server
    pool = Pool(connect_timeout=1.0, read_timeout=5.0, keepalive=0.3)
    req = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
    first = await pool.request("127.0.0.1", port, req)
    assert first.status == 200 and await first.read() == b"GET /one 0"
    first.release()
    second = await pool.request("127.0.0.1", port, req)
    assert second is first  # the same connection, kept alive
    assert await second.read() == b"GET /one 0"
    second.release()
    await asyncio.sleep(0.5)
    assert not pool.idle  # expired after keepalive
    third = await pool.request("127.0.0.1", port, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert third is not first and third.length is None
    assert await third.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"  # chunked, whole
    third.release()
    await pool.close()


async def test_refused_is_not_connected_and_a_reset_is_a_cut():
    pool = Pool(connect_timeout=1.0, read_timeout=1.0, keepalive=1.0)
    with socket_listener() as (port, accept):
        with pytest.raises(NotConnected) as e:
            await pool.request("127.0.0.1", 1, b"GET / HTTP/1.1\r\n\r\n")
        assert e.value.down
        task = asyncio.create_task(pool.request("127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n"))
        conn = await accept()
        conn.close()  # took the request, answered nothing
        with pytest.raises(Cut):
            await task
    await pool.close()


async def test_a_silent_replica_is_a_cut_after_the_read_timeout():
    pool = Pool(connect_timeout=1.0, read_timeout=0.3, keepalive=1.0)
    with socket_listener() as (port, accept):
        task = asyncio.create_task(pool.request("127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n"))
        conn = await accept()
        with pytest.raises(Cut) as e:
            await task
        assert e.value.timeout
        conn.close()
    await pool.close()


async def test_a_pause_for_a_slow_reader_is_not_counted_against_the_replica() -> None:
    """Reading pauses while the relay's client is full: that is the client's time. Once the
    relay's task reads on, the replica has a whole read timeout again (the timer's next
    tick used to cut it, counting the pause against it)."""
    pool = Pool(connect_timeout=1.0, read_timeout=1.0, keepalive=1.0)
    loop = asyncio.get_running_loop()
    piece = b"x" * 1000
    got: list[bytes] = []
    full = True

    def relay(data: bytes, end: bool) -> bool:
        got.append(data)
        return full  # True: its client's socket is full

    with socket_listener() as (port, accept):
        task = asyncio.create_task(pool.request("127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n"))
        conn = await accept()
        with conn:  # closed however the test ends
            conn.setblocking(False)
            await loop.sock_recv(conn, 1024)
            await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            up = await task
            up.relay = relay
            await loop.sock_sendall(conn, b"%x\r\n%b\r\n" % (len(piece), piece))
            await up.relayed()  # woken: the relay's client is full
            assert up._paused and got == [piece]
            await asyncio.sleep(2.5)  # the timer ticks at 1, 2 and 3 s
            full = False

            async def the_end() -> None:  # after the tick at 3 s, within 1 s of reading on
                await asyncio.sleep(0.75)
                await loop.sock_sendall(conn, b"3\r\nend\r\n0\r\n\r\n")

            end = asyncio.create_task(the_end())
            await up.relayed()  # reads on, to the end
            await end
            assert up.done and b"".join(got) == piece + b"end"
            up.release()
    await pool.close()


class socket_listener:
    """A listening socket whose accepted connections the test drives by hand."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.setblocking(False)

        async def accept():
            conn, _ = await asyncio.get_running_loop().sock_accept(self.sock)
            return conn

        return self.sock.getsockname()[1], accept

    def __exit__(self, *exc):
        self.sock.close()


async def test_a_header_line_that_never_ends_is_refused_once_over_the_head_limit(server):
    """llhttp keeps an unfinished header line in memory: the server bounds what a head may
    take before it is complete (431), however the bytes are split."""
    srv, port = server
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nX-Endless: ")
    for _ in range(100):  # 6.4 MB if it were all taken
        w.write(b"a" * 65536)
        try:
            await w.drain()
        except ConnectionError:
            break
    try:
        async with asyncio.timeout(5):
            out = await r.read()
    except ConnectionResetError:  # closed with the client's bytes unread: a reset
        out = b""
    w.close()
    assert out.startswith(b"HTTP/1.1 431") or out == b""
    assert not srv.connections


async def test_bodies_larger_than_the_head_limit_pass_in_one_piece_or_many(server):
    """The head bound counts head bytes only: a body in the same segment as its head, or
    one after another on a kept-alive connection, is not taken for a long head."""
    srv = Server(handler, ClientLimits(max_head_bytes=1024), 1 << 20)
    port = await srv.listen("127.0.0.1", 0)
    body = b"x" * 200_000
    one = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    last = one.replace(b"Host: x", b"Host: x\r\nConnection: close")
    out = await talk(port, one + one + last)
    await srv.stop(1.0)
    assert out.count(b"HTTP/1.1 200 OK") == 3 and out.count(b"POST /big 200000") == 3


async def test_connections_over_the_limit_get_a_503_and_the_others_are_served():
    srv = Server(handler, ClientLimits(max_connections=2), 1024)
    port = await srv.listen("127.0.0.1", 0)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await asyncio.sleep(0.05)
    out = await talk(port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503") and b"too_many_connections" in out
    assert srv.refused == 1
    r, w = held[0]
    w.write(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(2):
        assert b"GET /held 0" in await r.readuntil(b"GET /held 0")
    for _, w in held:
        w.close()
    await asyncio.sleep(0.05)  # their slots free up
    out = await talk(port, b"GET /y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"GET /y 0")
    await srv.stop(1.0)
