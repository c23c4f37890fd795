"""The load generator: its own process, driven by JSON lines on stdin, answering on stdout.

    -> {"op": "run", "url": ..., "path": ..., "body": {...}, "stream": false,
        "concurrency": 16, "warmup": 100, "requests": 1000, "time_limit": 60}
    <- {"event": "warm", "errors": 0, ...}      warmup done, connections open; it waits
    -> {"op": "go"}                             the driver has read the CPU counters
    <- {"event": "done", "lat_us": [...], "ttfb_us": [...], "errors": 0, "elapsed": ...}
    -> {"op": "quit"}                           (or EOF on stdin)

`concurrency` workers share one keep-alive pool of that many connections; each sends its
next request when the last one has been read to the end, until `requests` have been sent
or `time_limit` seconds have passed. Only loopback URLs are accepted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import uvloop

HEADERS = {"Content-Type": "application/json"}
REQUEST_TIMEOUT = 30.0
GO_TIMEOUT = 60.0
MAX_ERROR_SAMPLES = 5


class BadCommand(ValueError):
    pass


@dataclass
class Tally:
    lat_us: list[int] = field(default_factory=list)
    ttfb_us: list[int] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    issued: int = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < MAX_ERROR_SAMPLES:
            self.samples.append(what)


def loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def one(
    session: aiohttp.ClientSession, url: str, body: bytes, stream: bool, t: Tally
) -> None:
    """One request, timed from send to its last byte (and to its first, for a stream)."""
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=HEADERS) as r:
            if stream:
                first = -1.0
                tail = b""
                async for chunk in r.content.iter_any():
                    if first < 0.0:
                        first = time.perf_counter()
                    tail = (tail + chunk)[-32:]
                ok = r.status == 200 and tail.endswith(b"data: [DONE]\n\n")
            else:
                data = await r.read()
                ok = r.status == 200 and b'"choices"' in data
                tail = data[-200:]
            end = time.perf_counter()
    except asyncio.CancelledError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        t.error(f"{type(e).__name__}: {e}")
        return
    if not ok:
        t.error(f"HTTP {r.status}: {tail[-200:].decode(errors='replace')}")
        return
    t.lat_us.append(round((end - t0) * 1e6))
    if stream:
        t.ttfb_us.append(round((first - t0) * 1e6))


async def drive(
    session: aiohttp.ClientSession, spec: dict[str, Any], count: int, limit: float
) -> tuple[Tally, float]:
    """count requests from `concurrency` workers, or as many as fit in limit seconds."""
    url = spec["url"].rstrip("/") + spec["path"]
    body = json.dumps(spec["body"]).encode()
    stream = bool(spec["stream"])
    t = Tally()
    start = time.perf_counter()
    deadline = start + limit

    async def worker() -> None:
        while t.issued < count and time.perf_counter() < deadline:
            t.issued += 1
            await one(session, url, body, stream, t)

    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    return t, time.perf_counter() - start


def check(spec: dict[str, Any]) -> None:
    for key, kind in (("url", str), ("path", str), ("body", dict), ("concurrency", int),
                      ("warmup", int), ("requests", int), ("time_limit", int | float)):
        if not isinstance(spec.get(key), kind):
            raise BadCommand(f"{key}: expected {kind}, got {spec.get(key)!r}")
    if not loopback(spec["url"]):
        raise BadCommand(f"url: only loopback targets are allowed, got {spec['url']!r}")
    if spec["concurrency"] < 1:
        raise BadCommand(f"concurrency: expected >= 1, got {spec['concurrency']}")


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run(spec: dict[str, Any], commands: asyncio.StreamReader) -> None:
    check(spec)
    c = spec["concurrency"]
    connector = aiohttp.TCPConnector(limit=c, limit_per_host=c, keepalive_timeout=60.0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm, _ = await drive(session, spec, max(spec["warmup"], c), spec["time_limit"])
        emit({"event": "warm", "errors": warm.errors, "error_samples": warm.samples})
        line = await asyncio.wait_for(commands.readline(), GO_TIMEOUT)
        if json.loads(line or b"{}").get("op") != "go":
            raise BadCommand(f"expected go, got {line!r}")
        t, elapsed = await drive(session, spec, spec["requests"], spec["time_limit"])
    emit(
        {
            "event": "done",
            "lat_us": t.lat_us,
            "ttfb_us": t.ttfb_us,
            "errors": t.errors,
            "error_samples": t.samples,
            "issued": t.issued,
            "elapsed": elapsed,
            "truncated": t.issued < spec["requests"],
        }
    )


async def serve() -> int:
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while True:
        line = await commands.readline()
        if not line:
            return 0
        try:
            cmd = json.loads(line)
            if cmd.get("op") == "quit":
                return 0
            if cmd.get("op") != "run":
                raise BadCommand(f"unknown op in {line!r}")
            await run(cmd, commands)
        except (BadCommand, ValueError, TimeoutError) as e:
            emit({"event": "error", "message": f"{type(e).__name__}: {e}"})


def main() -> int:
    return uvloop.run(serve())


if __name__ == "__main__":
    raise SystemExit(main())
