"""Shared by the reliability tests: a quick gateway config, background clients that record
who answered each request, and the gateway process's resource counts."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.helpers import gateway_config
from warmgw.config import Config

# One warmup round is a few dozen tiny requests: replicas are ready in well under a second.
TINY_WARMUP: dict[str, Any] = {
    "prompt_lengths": [16],
    "max_tokens": [2],
    "kinds": ["completions", "chat"],
    "concurrency": [1, 2],
    "deadline": 10,
}


def quick_config(urls: list[str], **extra: Any) -> Config:
    """Small upstream timeouts, a tiny warmup, a short ramp, quick ejection and backoff."""
    sections: dict[str, Any] = {
        "warmup": TINY_WARMUP,
        "ramp": {"initial_weight": 0.5, "doubling_time": 0.2, "max_ramp_time": 2},
        "upstream": {"connect_timeout": 1.0, "read_timeout": 2.0},
        "outlier": {"consecutive_errors": 3, "backoff_base": 0.3, "backoff_max": 2.0},
        "health": {"interval": 0.2, "timeout": 1.0, "probe_backoff_max": 1.0},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(sections.get(key), dict):
            sections[key] = {**sections[key], **value}
        else:
            sections[key] = value
    return gateway_config(urls, **sections)


def body(stream: bool, chat: bool, max_tokens: int = 3, words: int = 4) -> dict[str, Any]:
    text = " ".join(["word"] * words)
    out: dict[str, Any] = {"model": "tiny", "max_tokens": max_tokens, "stream": stream}
    if chat:
        out["messages"] = [{"role": "user", "content": text}]
    else:
        out["prompt"] = text
    return out


def path(chat: bool) -> str:
    return "/v1/chat/completions" if chat else "/v1/completions"


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    status: int
    replica: str  # X-Warmgw-Replica: "" when the gateway answered itself or nothing came
    error: str = ""


async def call(
    session: aiohttp.ClientSession, url: str, stream: bool, chat: bool, max_tokens: int = 3
) -> Result:
    """One request; ok means 200 and a whole answer (a stream ends with [DONE], no error)."""
    try:
        async with session.post(url + path(chat), json=body(stream, chat, max_tokens)) as r:
            who = r.headers.get("X-Warmgw-Replica", "")
            data = await r.read()
            if r.status != 200:
                return Result(False, r.status, who, data[:300].decode(errors="replace"))
            if stream:
                whole = data.rstrip().endswith(b"data: [DONE]") and b'"error"' not in data
                return Result(whole, 200, who, "" if whole else data[-300:].decode())
            ok = bool(json.loads(data).get("choices"))
            return Result(ok, 200, who, "" if ok else data[:300].decode())
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        return Result(False, 0, "", repr(e))


@dataclass
class Traffic:
    """Closed-loop clients (a mix of stream and not, chat and completions) until stopped."""

    url: str
    clients: int = 6
    max_tokens: int = 3
    seed: int = 0
    results: list[Result] = field(default_factory=list)

    async def __aenter__(self) -> Traffic:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        self._tasks = [
            asyncio.create_task(self._client(random.Random(self.seed * 100 + i)))
            for i in range(self.clients)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def _client(self, rng: random.Random) -> None:
        deadline = time.monotonic() + 120  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            stream, chat = rng.random() < 0.5, rng.random() < 0.5
            self.results.append(
                await call(self._session, self.url, stream, chat, self.max_tokens)
            )

    def errors(self, but: str | None = None) -> list[Result]:
        """Failed requests, except those the replica `but` answered."""
        return [r for r in self.results if not r.ok and (but is None or r.replica != but)]

    def served_by(self, name: str) -> int:
        return sum(r.replica == name for r in self.results)


# -- raw HTTP, for what a well-behaved client library would not send ---------------------


async def exchange(port: int, data: bytes, wait: float = 3.0) -> tuple[bytes, bool]:
    """Send raw bytes, read until the gateway closes the connection (closed=True) or
    `wait` passes (closed=False)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(data)
        await w.drain()
        out = b""
        try:
            async with asyncio.timeout(wait):
                while chunk := await r.read(65536):
                    out += chunk
            return out, True
        except TimeoutError:
            return out, False
        except ConnectionResetError:
            return out, True
    finally:
        w.close()


def post(payload: bytes, *headers: bytes, path: bytes = b"/v1/completions") -> bytes:
    head = [b"POST " + path + b" HTTP/1.1", b"Host: gw", *headers]
    if not any(h.lower().startswith((b"content-length", b"transfer-encoding")) for h in headers):
        head.append(b"Content-Length: %d" % len(payload))
    return b"\r\n".join(head) + b"\r\n\r\n" + payload


def status_lines(raw: bytes) -> list[bytes]:
    return [line for line in raw.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def openai_error(raw: bytes) -> dict[str, object]:
    err = json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return dict(err)


async def trickle(port: int, head: bytes, then: bytes, every: float) -> tuple[float, bytes]:
    """Send head, then `then` one byte every `every` s until the gateway closes the
    connection; (seconds from connect to close, what the gateway sent)."""
    t0 = time.monotonic()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    got = b""

    async def read() -> None:
        nonlocal got
        while chunk := await r.read(65536):
            got += chunk

    reader = asyncio.create_task(read())
    try:
        w.write(head)
        for i in range(int(10 / every)):  # bounded: 10 s of trickling at most
            if reader.done():
                break
            await asyncio.sleep(every)
            if w.transport.is_closing():  # the gateway hung up meanwhile
                break
            try:
                w.write(then[i % len(then): i % len(then) + 1])
                await w.drain()
            except ConnectionError:
                break
            except RuntimeError:  # uvloop: the socket closed under the write (hung up)
                if not w.transport.is_closing():
                    raise
                break
        try:
            await asyncio.wait_for(reader, 2.0)
        except ConnectionResetError:
            pass
        return time.monotonic() - t0, got
    finally:
        reader.cancel()
        w.close()


# -- the process's resources ----------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def task_count() -> int:
    return len(asyncio.all_tasks())


async def settle(cond: Any, timeout: float = 5.0, every: float = 0.05) -> bool:
    """Poll cond() every `every` s until true or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return bool(cond())
        await asyncio.sleep(every)
    return True
