"""Clients that misbehave, over raw sockets where aiohttp's client would not let us: bad
bodies, bad framing, slow senders, early leavers. Each gets a clear 4xx (or a closed
connection where HTTP demands it), nothing reaches a replica that should not, and other
clients are served meanwhile."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.helpers import wait_all_ready, wait_for
from tests.reliability.common import (
    Traffic,
    body,
    call,
    exchange,
    openai_error,
    post,
    quick_config,
    status_lines,
    trickle,
)
from warmgw.app import ClientLimits, Gateway
from warmgw.sim import SimConfig, SimFleet

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

LIMITS = ClientLimits(idle_timeout=1.0, body_timeout=1.0)
MAX_BODY = 64 * 1024
OK_BODY = json.dumps(body(False, False, 2)).encode()
JSON_CT = b"Content-Type: application/json"


class Env:
    def __init__(self, fleet: SimFleet, gw: Gateway) -> None:
        self.fleet = fleet
        self.gw = gw

    @property
    def user_requests(self) -> int:
        return sum(r.stats.user_requests for r in self.fleet.replicas)

    async def idle(self) -> None:
        """Nothing in flight anywhere: the gateway's counts and the replicas' queues."""
        await wait_for(
            lambda: all(e.inflight == 0 for e in self.gw.registry.endpoints.values())
            and all(r.process.scheduler.running == 0 for r in self.fleet.replicas),
            3.0, "in-flight requests to end",
        )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env() -> AsyncIterator[Env]:
    async with SimFleet(SimConfig(ttft_base=0.004, itl=0.002), replicas=2) as fleet:
        cfg = quick_config(fleet.urls, upstream={"max_body_bytes": MAX_BODY})
        async with Gateway(cfg, limits=LIMITS) as gw:
            await wait_all_ready(gw, timeout=20)
            yield Env(fleet, gw)


async def still_serves(env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        assert (await call(s, env.gw.url, stream=True, chat=True)).ok
        assert (await call(s, env.gw.url, stream=False, chat=False)).ok


# -- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"model": "tiny", "prompt": "hello', "not valid JSON"),  # truncated
        (b'{"model": "tiny", "prompt": "\xff\xfe"}', "not valid JSON"),  # not UTF-8
        (b"[" * 5000 + b"]" * 5000, "not valid JSON"),  # deeper than the parser goes
        (b"[1, 2]", "must be a JSON object"),
        (b'"a string"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"42", "must be a JSON object"),
    ],
    ids=["malformed", "truncated", "not-utf8", "too-deep", "array", "string", "null", "number"],
)
async def test_bad_json_is_400_and_reaches_no_replica(env, payload, why):
    before = env.user_requests
    raw, _ = await exchange(env.gw.port, post(payload, JSON_CT,
                                               b"Connection: close"))
    assert status_lines(raw) == [b"HTTP/1.1 400 Bad Request"]
    err = openai_error(raw)
    assert why in str(err["message"]) and err["type"] == "invalid_request_error"
    assert env.user_requests == before


@pytest.mark.parametrize(
    ("ctype", "status"),
    [
        (b"text/plain", 415),
        (b"application/x-www-form-urlencoded", 415),
        (b"multipart/form-data; boundary=x", 415),
        (b"application/xml", 415),
        (b"application/json; charset=utf-8", 200),
        (b"Application/JSON", 200),
        (b"application/vnd.api+json", 200),
        (None, 200),  # no Content-Type at all: taken as JSON, as curl -d users expect
    ],
)
async def test_content_type_must_be_json_when_given(env, ctype, status):
    headers = [b"Connection: close"] + ([b"Content-Type: " + ctype] if ctype else [])
    raw, closed = await exchange(env.gw.port, post(OK_BODY, *headers))
    assert closed and status_lines(raw)[0].startswith(b"HTTP/1.1 %d" % status)
    if status == 415:
        err = openai_error(raw)
        assert err["code"] == "unsupported_media_type" and "application/json" in str(
            err["message"])


async def test_body_over_the_limit_is_413_with_or_without_content_length(env):
    before = env.user_requests
    big = json.dumps({"model": "tiny", "prompt": "x" * (MAX_BODY + 10)}).encode()
    raw, _ = await exchange(env.gw.port, post(big, JSON_CT), 2.0)
    assert status_lines(raw) == [b"HTTP/1.1 413 Request Entity Too Large"]
    assert openai_error(raw)["code"] == "request_too_large"
    # chunked: no length announced, the limit is found while reading
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 4096]), big[i:i + 4096])
                      for i in range(0, len(big), 4096))
    raw, _ = await exchange(env.gw.port, post(chunks + b"0\r\n\r\n", b"Transfer-Encoding: chunked",
                                               JSON_CT), 2.0)
    assert status_lines(raw) == [b"HTTP/1.1 413 Request Entity Too Large"]
    assert openai_error(raw)["code"] == "request_too_large"
    assert env.user_requests == before
    await still_serves(env)


# -- heads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        post(OK_BODY, b"X-Big: " + b"a" * 20_000),
        post(OK_BODY, *(b"X-H%d: v" % i for i in range(300))),
        b"GET /v1/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
    ],
    ids=["one-huge-header", "too-many-headers", "huge-request-line"],
)
async def test_huge_heads_are_rejected_by_the_parser_without_harm(env, request_bytes):
    before = env.user_requests
    raw, closed = await exchange(env.gw.port, request_bytes)
    lines = status_lines(raw)
    assert closed and len(lines) <= 1
    assert not lines or lines[0].split()[1] == b"400"
    assert env.user_requests == before
    await still_serves(env)


async def test_head_of_many_allowed_headers_over_the_total_limit_is_431(env):
    # each header within aiohttp's limits, 800 kB in all: never forwarded to a replica
    before = env.user_requests
    fill = [b"X-Fill-%d: " % i + b"b" * 8000 for i in range(100)]
    raw, _ = await exchange(env.gw.port, post(OK_BODY, *fill, b"Connection: close"))
    assert status_lines(raw) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    assert openai_error(raw)["code"] == "headers_too_large"
    raw, _ = await exchange(env.gw.port, post(OK_BODY, *fill[:3], b"Connection: close"))
    assert status_lines(raw) == [b"HTTP/1.1 200 OK"]  # 24 kB is fine
    assert env.user_requests == before + 1


# -- slow senders ---------------------------------------------------------------------------


async def test_slowloris_heads_are_cut_off_while_others_are_served(env):
    head = b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\n"
    async with Traffic(env.gw.url, clients=3) as t:
        results = await asyncio.gather(
            *(trickle(env.gw.port, head, b"X-Slow: " + b"z" * 50, 0.1) for _ in range(20))
        )
    for took, got in results:
        assert took < LIMITS.idle_timeout + 1.0  # cut at the idle timeout, not 10 s later
        assert got == b""  # no request was ever complete: nothing to answer
    assert t.errors() == [] and len(t.results) > 20  # the others were served meanwhile


async def test_slow_body_gets_408_and_the_connection_is_closed(env):
    before = env.user_requests
    head = post(b"", JSON_CT, b"Content-Length: 1000")
    async with Traffic(env.gw.url, clients=3) as t:
        results = await asyncio.gather(
            *(trickle(env.gw.port, head, OK_BODY, 0.1) for _ in range(10)),
            # a body cut short: announced 1000 bytes, sends a few, then nothing
            trickle(env.gw.port, head + OK_BODY[:10], b" ", 100.0),
        )
    for took, got in results:
        assert took < LIMITS.body_timeout + 1.0
        assert status_lines(got) == [b"HTTP/1.1 408 Request Timeout"]
        assert openai_error(got)["code"] == "request_timeout"
        assert b"Connection: close" in got
    assert env.user_requests - before == len(t.results)  # only the good clients' requests
    assert t.errors() == [] and len(t.results) > 10


async def test_idle_connections_are_closed_after_the_idle_timeout(env):
    async with aiohttp.ClientSession() as s:
        assert (await call(s, env.gw.url, stream=False, chat=True)).ok
    r, w = await asyncio.open_connection("127.0.0.1", env.gw.port)
    t0 = time.monotonic()
    async with asyncio.timeout(LIMITS.idle_timeout + 2.0):
        assert await r.read() == b""  # the gateway closed it, without a request
    assert time.monotonic() - t0 >= LIMITS.idle_timeout - 0.1
    w.close()


# -- leaving early --------------------------------------------------------------------------

LONG = json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 2000, "stream": True}).encode()
LONG_JSON = json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 2000}).encode()


async def leave(env: Env, request_bytes: bytes, events: int | None) -> None:
    """Send a request for a ~4 s generation, read its head and `events` SSE events (None:
    read nothing), then drop the connection; the upstream request must end at once."""
    r, w = await asyncio.open_connection("127.0.0.1", env.gw.port)
    w.write(request_bytes)
    await w.drain()
    got = b""
    if events is None:
        await wait_for(lambda: any(x.process.scheduler.running for x in env.fleet.replicas),
                       3.0, "the request to reach a replica")
    else:
        async with asyncio.timeout(3.0):
            while b"\r\n\r\n" not in got or got.count(b"data: ") < events:
                chunk = await r.read(65536)
                assert chunk, got
                got += chunk
    w.transport.abort()  # gone, without a goodbye
    t0 = time.monotonic()
    await env.idle()
    assert time.monotonic() - t0 < 1.0  # aborted upstream, not generated to the end


@pytest.mark.parametrize(
    ("request_bytes", "events"),
    [
        (post(LONG_JSON, JSON_CT), None),
        (post(LONG, JSON_CT), 0),
        (post(LONG, JSON_CT), 1),
        (post(LONG, JSON_CT), 20),
    ],
    ids=["before-headers", "after-headers", "after-first-chunk", "mid-stream"],
)
async def test_client_leaving_aborts_the_upstream_request(env, request_bytes, events):
    await env.idle()
    stats = env.gw.router.stats.requests
    left = sum(n for k, n in stats.items() if k[3] == 499)
    cut = sum(rec.outcome == "disconnected" for r in env.fleet.replicas for rec in r.log)
    await leave(env, request_bytes, events)
    assert sum(rec.outcome == "disconnected" for r in env.fleet.replicas for rec in r.log) == \
        cut + 1
    await wait_for(lambda: sum(n for k, n in stats.items() if k[3] == 499) == left + 1, 2.0,
                   "the request to be counted as 499")


async def test_client_leaving_mid_body_sends_nothing_upstream(env):
    before = env.user_requests
    _, w = await asyncio.open_connection("127.0.0.1", env.gw.port)
    w.write(post(b"", JSON_CT, b"Content-Length: %d" % len(OK_BODY))
            + OK_BODY[:20])
    await w.drain()
    await asyncio.sleep(0.2)
    w.transport.abort()
    await asyncio.sleep(0.2)
    assert env.user_requests == before
    await still_serves(env)


# -- smuggling and injection ----------------------------------------------------------------

SMUGGLED = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        post(b"0\r\n\r\n" + SMUGGLED, b"Content-Length: 5", b"Transfer-Encoding: chunked"),
        post(b"0\r\n\r\n" + SMUGGLED, b"Transfer-Encoding: chunked", b"Content-Length: 5"),
        post(b"0\r\n\r\n" + SMUGGLED, b"Content-Length: 5", b"Content-Length: 43"),
        post(SMUGGLED, b"Content-Length: 0", b"Transfer-Encoding: xchunked"),
        post(b"0\r\n\r\n" + SMUGGLED, b"Transfer-Encoding: chunked, identity"),
        post(b"0\r\n\r\n" + SMUGGLED, b"Transfer-Encoding : chunked"),
        post(b"0\r\n\r\n" + SMUGGLED, b"Transfer-Encoding: chunked", b"Transfer-Encoding: x"),
        post(b"0\r\n\r\n" + SMUGGLED, b"Content-Length: 5", b" Transfer-Encoding: chunked"),
        post(b"0\r\n\r\n" + SMUGGLED, b"Content-Length: +5"),
    ],
    ids=["CL.TE", "TE.CL", "CL.CL", "TE-unknown", "TE-list", "TE-space-colon", "TE.TE",
         "obs-fold", "CL-signed"],
)
async def test_ambiguous_framing_is_rejected_never_two_requests(env, request_bytes):
    before = env.user_requests
    raw, closed = await exchange(env.gw.port, request_bytes)
    lines = status_lines(raw)
    assert closed and len(lines) <= 1, raw  # never a second answer (to the smuggled GET)
    assert not lines or lines[0].split()[1] == b"400", raw
    assert b'"object": "list"' not in raw
    assert env.user_requests == before


@pytest.mark.parametrize(
    "header",
    [b"X-Note: a\rInjected: 1", b"X-Note: a\nInjected: 1", b"X-Request-Id: a\r\n\tfolded",
     b"X-Request-Id: a\x00b"],
    ids=["CR", "LF", "folded", "NUL"],
)
async def test_cr_lf_and_nul_in_headers_are_400(env, header):
    before = env.user_requests
    raw, closed = await exchange(env.gw.port, post(OK_BODY, header))
    assert closed and [line.split()[1] for line in status_lines(raw)] == [b"400"], raw
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert not [line for line in head.split(b"\r\n") if line.lower().startswith(b"injected")]
    assert env.user_requests == before


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b"abc-123_XYZ.7", True),
        (b"r" * 128, True),
        (b"r" * 129, False),
        (b"with\ttab", False),
        (b"caf\xc3\xa9", False),  # UTF-8
        (b"\xff\xfe", False),
        (b"<script>alert(1)</script>", True),  # printable ASCII: harmless in a header
    ],
    ids=["plain", "128", "129", "tab", "utf8", "bytes", "markup"],
)
async def test_request_id_is_passed_only_when_safe(env, given, kept):
    raw, _ = await exchange(env.gw.port, post(OK_BODY, b"X-Request-Id: " + given,
                                               b"Connection: close"))
    assert status_lines(raw) == [b"HTTP/1.1 200 OK"]
    head, payload = raw.split(b"\r\n\r\n", 1)
    rid = [line.split(b": ", 1)[1] for line in head.split(b"\r\n")
           if line.lower().startswith(b"x-request-id:")]
    assert len(rid) == 1
    if kept:
        assert rid[0] == given
    else:
        assert len(rid[0]) == 32 and all(c in b"0123456789abcdef" for c in rid[0])
    # what the replica was given is what the client got back (the sim echoes it in the id)
    assert json.loads(payload)["id"] == "cmpl-" + rid[0].decode()


async def test_expect_100_continue_is_answered_here_and_not_passed_on(env):
    # the gateway reads the whole body before it forwards: the replica never waits on it
    r, w = await asyncio.open_connection("127.0.0.1", env.gw.port)
    w.write(post(b"", JSON_CT, b"Content-Length: %d" % len(OK_BODY), b"Expect: 100-continue",
                 b"Connection: close"))
    await w.drain()
    async with asyncio.timeout(3):
        assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
        w.write(OK_BODY)
        raw = await r.read()
    w.close()
    assert status_lines(raw) == [b"HTTP/1.1 200 OK"] and b'"choices"' in raw
