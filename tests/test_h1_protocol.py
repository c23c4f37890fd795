"""warmgw.h1's client limits and request cycle, without sockets: bytes are fed to the
protocol, its answers read off a fake transport, and its timers fired by moving a fake
clock (no sleeping). Tests that need a handler to run are async (the handler is a task on
the running loop); the rest run without a loop at all."""

from __future__ import annotations

import asyncio
import heapq
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from warmgw.config import ClientLimits
from warmgw.h1.protocol import MAX_PIPELINED, HttpProtocol
from warmgw.h1.server import Request, Server

pytestmark = pytest.mark.timeout(10)


class FakeTimer:
    def __init__(self, when: float, seq: int, fn: Callable[..., None], args: tuple[Any, ...]):
        self.when, self.seq, self.fn, self.args = when, seq, fn, args
        self.cancelled = False

    def __lt__(self, other: FakeTimer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The loop as the server uses it, with a clock the test moves: advance() fires the
    timers that fall due. Tasks and futures go to the running loop."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []
        self.seq = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> FakeTimer:
        self.seq += 1
        timer = FakeTimer(self.now + delay, self.seq, fn, args)
        heapq.heappush(self.timers, timer)
        return timer

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while self.timers and self.timers[0].when <= end:
            timer = heapq.heappop(self.timers)
            if not timer.cancelled:
                self.now = timer.when
                timer.fn(*timer.args)
        self.now = end

    def pending(self) -> int:
        return sum(not t.cancelled for t in self.timers)

    def create_task(self, coro: Any) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)

    def create_future(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False  # close() or abort()
        self.aborted = False
        self.reading = True
        self.buffered = 0  # what get_write_buffer_size() reports

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def echo(req: Request) -> None:
    req.conn.respond(200, [(b"Content-Type", b"text/plain")],
                     b"%s %s %d" % (req.method.encode(), req.target.encode(), len(req.body)))


LIMITS = ClientLimits(idle_timeout=5.0, body_timeout=2.0, write_timeout=4.0,
                      max_line_size=100, max_field_size=100, max_headers=5,
                      max_head_bytes=300, max_connections=2)


class Client:
    """One connection to a server on a fake loop."""

    def __init__(self, handler: Any = echo, limits: ClientLimits = LIMITS,
                 max_body: int = 1000, server: Server | None = None) -> None:
        self.loop = FakeLoop() if server is None else server.loop
        self.server = server or Server(handler, limits, max_body, loop=self.loop)
        self.proto = HttpProtocol(self.server)
        self.t = FakeTransport()
        self.proto.connection_made(self.t)

    def send(self, *chunks: bytes) -> None:
        for c in chunks:
            self.proto.data_received(c)

    @property
    def out(self) -> bytes:
        return bytes(self.t.out)


async def settle() -> None:
    """Let handler tasks run to where they wait."""
    for _ in range(20):
        await asyncio.sleep(0)


def req(target: bytes = b"/", *headers: bytes, body: bytes = b"", method: bytes = b"GET",
        length: bool = True) -> bytes:
    head = [method + b" " + target + b" HTTP/1.1", b"Host: gw", *headers]
    if body and length:
        head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def refusal(status: bytes, code: str, message: str) -> bytes:
    """The whole answer to a refused request, its Date line as DATE."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nDATE"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))


def undated(out: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]+ GMT\r\n", b"DATE", out)


def statuses(out: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", out)


# -- heads ----------------------------------------------------------------------------------


def test_headers_over_the_total_limit_are_431_and_close():
    c = Client()
    c.send(req(b"/", *(b"X-%d: %b" % (i, b"a" * 90) for i in range(4))))  # 4 x 93 > 300
    assert undated(c.out) == refusal(b"431 Request Header Fields Too Large",
                                     "headers_too_large",
                                     "request headers are larger than the limit of 300 bytes")
    assert c.t.closed and not c.t.aborted
    c.send(req(b"/after"))  # what follows is not read
    assert statuses(c.out) == [b"431"]


def test_a_header_line_that_never_ends_is_431_once_over_the_head_cap():
    c = Client()
    c.send(b"GET / HTTP/1.1\r\nX-Endless: ")
    cap = 300 + 100 + 2 * 5 + 4096
    sent = 0
    while sent <= cap:
        assert not c.t.closed
        c.send(b"a" * 500)
        sent += 500
    assert statuses(c.out) == [b"431"] and c.t.closed


def test_too_many_headers_are_400():
    c = Client()
    c.send(req(b"/", *(b"X-%d: v" % i for i in range(5))))  # Host makes six
    assert undated(c.out) == refusal(b"400 Bad Request", "bad_request", "more than 5 headers")
    assert c.t.closed


@pytest.mark.parametrize(("request_bytes", "message"), [
    (req(b"/" + b"a" * 100), "the request line is longer than 100 bytes"),
    (req(b"/", b"X-Long: " + b"a" * 95), "a header line is longer than 100 bytes"),
], ids=["request-line", "header-line"])
def test_lines_too_long_are_400(request_bytes, message):
    c = Client()
    c.send(request_bytes)
    assert undated(c.out) == refusal(b"400 Bad Request", "bad_request", message)
    assert c.t.closed


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost gw\r\n\r\n",  # no colon
    b"\x00\x01\x02 nonsense\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
], ids=["no-colon", "garbage", "length-and-chunked", "two-lengths"])
def test_a_malformed_request_is_400_and_close(request_bytes):
    c = Client()
    c.send(request_bytes)
    assert statuses(c.out) == [b"400"] and c.out.endswith(b"}")
    assert b"Connection: close\r\n" in c.out and b"malformed HTTP request" in c.out
    assert c.t.closed and not c.t.aborted
    c.send(req(b"/after"))
    assert statuses(c.out) == [b"400"]


# -- bodies ---------------------------------------------------------------------------------

TOO_LARGE = ("413 Request Entity Too Large", "request_too_large",
             "request body is larger than the limit of 1000 bytes")


def test_a_content_length_over_the_limit_is_413_before_any_body_arrives():
    c = Client()
    c.send(req(b"/", b"Content-Length: 1001", method=b"POST"))
    status, code, message = TOO_LARGE
    assert undated(c.out) == refusal(status.encode(), code, message)
    assert c.t.closed and c.loop.pending() == 0


@pytest.mark.parametrize("pieces", [1, 7], ids=["one-read", "many-reads"])
def test_a_chunked_body_over_the_limit_is_413(pieces):
    c = Client()
    data = req(b"/", b"Transfer-Encoding: chunked", body=chunked(b"x" * 1001, 100),
               method=b"POST", length=False)
    step = -(-len(data) // pieces)
    c.send(*(data[i:i + step] for i in range(0, len(data), step)))
    status, code, message = TOO_LARGE
    assert undated(c.out) == refusal(status.encode(), code, message)
    assert c.t.closed


async def test_bodies_up_to_the_limit_are_taken_with_or_without_a_length():
    c = Client()
    c.send(req(b"/a", body=b"x" * 1000, method=b"POST"),
           req(b"/b", b"Transfer-Encoding: chunked", body=chunked(b"y" * 1000, 300),
               method=b"POST", length=False))
    await settle()
    assert statuses(c.out) == [b"200", b"200"]
    assert c.out.endswith(b"POST /b 1000") and b"POST /a 1000" in c.out
    assert not c.t.closed


def test_a_body_that_does_not_arrive_in_body_timeout_is_408():
    c = Client()
    c.send(req(b"/", b"Content-Length: 10", method=b"POST"), b"abc")
    c.loop.advance(1.5)
    c.send(b"def")  # trickling does not extend the time for the whole body
    c.loop.advance(0.4)
    assert c.out == b"" and not c.t.closed
    c.loop.advance(0.2)
    assert undated(c.out) == refusal(b"408 Request Timeout", "request_timeout",
                                     "the request body did not arrive within 2 s")
    assert c.t.closed


# -- idle connections -----------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_the_idle_timeout():
    c = Client()
    c.loop.advance(4.9)
    assert not c.t.closed
    c.loop.advance(0.2)
    assert c.t.closed and c.out == b""


def test_a_head_that_never_completes_is_closed_at_the_idle_timeout():
    c = Client()
    head = b"GET / HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"z" * 50
    for i in range(49):  # a byte every 0.1 s keeps nothing alive
        c.send(head[i:i + 1])
        c.loop.advance(0.1)
    assert not c.t.closed
    c.loop.advance(0.2)
    assert c.t.closed and c.out == b""


async def test_the_idle_timer_starts_again_after_each_response():
    c = Client()
    c.loop.advance(4.0)
    c.send(req(b"/a"))
    await settle()
    assert statuses(c.out) == [b"200"]
    c.loop.advance(4.0)  # 8 s since the connection opened, 4 s since its answer
    assert not c.t.closed
    c.loop.advance(1.1)
    assert c.t.closed


# -- keep-alive and pipelining --------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order_one_at_a_time():
    gate = asyncio.Event()
    running: list[str] = []

    async def handler(r: Request) -> None:
        running.append(r.path)
        if r.path == "/slow":
            await gate.wait()
        await echo(r)

    c = Client(handler)
    c.send(req(b"/slow") + req(b"/b", body=b"abc", method=b"POST") + req(b"/c")[:20])
    c.send(req(b"/c")[20:])
    await settle()
    assert running == ["/slow"] and c.out == b""  # the others wait their turn
    gate.set()
    await settle()
    assert running == ["/slow", "/b", "/c"]
    bodies = re.findall(rb"\r\n\r\n([^H]+)", c.out)
    assert bodies == [b"GET /slow 0", b"POST /b 3", b"GET /c 0"]
    assert not c.t.closed


async def test_reading_pauses_behind_too_many_pipelined_requests():
    gate = asyncio.Event()

    async def handler(r: Request) -> None:
        await gate.wait()
        await echo(r)

    c = Client(handler)
    c.send(req(b"/0") * (MAX_PIPELINED + 1))
    await settle()
    assert not c.t.reading
    gate.set()
    await settle()
    assert c.t.reading and statuses(c.out) == [b"200"] * (MAX_PIPELINED + 1)


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive", b"Connection: close",
                                        b"Proxy-Connection: keep-alive", b"connection: Upgrade"])
async def test_the_request_has_its_http_version_and_keep_alive(version, connection):
    # the version is inferred when llhttp keeps alive with no Connection header (1.1 only)
    seen: list[tuple[str, bool]] = []

    async def handler(r: Request) -> None:
        seen.append((r.version, r.keep_alive))
        await echo(r)

    c = Client(handler)
    head = [b"GET / HTTP/" + version, b"Host: gw", *([connection] if connection else [])]
    c.send(b"\r\n".join(head) + b"\r\n\r\n")
    await settle()
    keep = b"close" not in connection if version == b"1.1" else b"keep-alive" in connection
    assert seen == [(version.decode(), keep)]


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
async def test_a_streams_first_and_last_pieces_may_go_with_its_head_and_its_end(version):
    async def handler(r: Request) -> None:
        r.conn.start(200, [(b"Content-Type", b"text/plain")], b"ab")
        r.conn.send(b"c")
        r.conn.send(b"de", end=True)
        r.conn.end()  # already ended: nothing more

    c = Client(handler)
    c.send(b"GET / HTTP/" + version + b"\r\nHost: gw\r\n\r\n")
    await settle()
    head, body = c.out.split(b"\r\n\r\n", 1)
    if version == b"1.1":
        assert b"Transfer-Encoding: chunked" in head
        assert body == b"2\r\nab\r\n1\r\nc\r\n2\r\nde\r\n0\r\n\r\n" and not c.t.closed
    else:
        assert body == b"abcde" and c.t.closed


async def test_connection_close_is_honoured_after_the_answer():
    c = Client()
    c.send(req(b"/a", b"Connection: close"))
    await settle()
    assert statuses(c.out) == [b"200"] and b"Connection: close\r\n" in c.out
    assert c.t.closed and not c.t.aborted


async def test_expect_100_continue_is_answered_before_the_body():
    c = Client()
    c.send(req(b"/e", b"Expect: 100-continue", b"Content-Length: 2", method=b"POST"))
    assert c.out == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"hi")
    await settle()
    assert c.out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert c.out.endswith(b"POST /e 2")


def test_connections_over_the_limit_get_503_and_close():
    first = Client()
    Client(server=first.server)
    third = Client(server=first.server)
    assert statuses(third.out) == [b"503"] and b"Retry-After: 1\r\n" in third.out
    assert b"too_many_connections" in third.out and third.t.closed
    assert first.server.refused == 1 and len(first.server.connections) == 2
    first.proto.connection_lost(None)  # a slot frees up
    fourth = Client(server=first.server)
    assert fourth.out == b"" and not fourth.t.closed


# -- the request cycle ----------------------------------------------------------------------


async def test_an_unanswered_request_gets_a_500_and_the_connection_serves_on():
    async def handler(r: Request) -> None:
        if r.path == "/silent":
            return
        await echo(r)

    c = Client(handler)
    c.send(req(b"/silent") + req(b"/after"))
    await settle()
    assert statuses(c.out) == [b"500", b"200"] and b"internal error in the gateway" in c.out


async def test_a_client_that_leaves_cancels_its_handler():
    cancelled = asyncio.Event()

    async def handler(r: Request) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    c = Client(handler)
    c.send(req(b"/a"))
    await settle()
    c.proto.connection_lost(None)
    await settle()
    assert cancelled.is_set() and c.out == b"" and not c.server.connections


async def test_a_stream_to_a_client_that_stops_reading_is_cut_after_write_timeout():
    outcome: list[str] = []

    async def handler(r: Request) -> None:
        r.conn.start(200, [])
        try:
            await r.conn.write(b"first")
            outcome.append("written")
        finally:
            outcome.append("ended")

    c = Client(handler)
    c.proto.pause_writing()  # the client's buffers are full
    c.t.buffered = 100
    c.send(req(b"/s"))
    await settle()
    c.loop.advance(3.9)
    assert not c.t.closed
    c.loop.advance(0.2)  # nothing left the queue for write_timeout
    assert c.t.aborted
    c.proto.connection_lost(None)
    await settle()
    assert outcome == ["ended"] and c.out.endswith(b"5\r\nfirst\r\n")  # stopped mid-write


async def test_a_slow_but_steady_reader_is_not_cut():
    outcome: list[str] = []

    async def handler(r: Request) -> None:
        r.conn.start(200, [])
        await r.conn.write(b"first")
        outcome.append("written")
        r.conn.end()

    c = Client(handler)
    c.proto.pause_writing()
    c.t.buffered = 1000
    c.send(req(b"/s"))
    await settle()
    for _ in range(10):  # 20 s, the queue shrinking all the while
        c.t.buffered -= 50
        c.loop.advance(2.0)
    assert not c.t.closed
    c.proto.resume_writing()
    await settle()
    assert outcome == ["written"] and c.out.endswith(b"5\r\nfirst\r\n0\r\n\r\n")
