"""Health checks spread over the interval, and warmups and probes that wait out the
gateway's own file-descriptor shortage: the supervisor on a fake clock, against a fake
HTTP session (no sockets)."""

from __future__ import annotations

import asyncio
import collections
import errno
import itertools
import json
from types import SimpleNamespace
from typing import Any

import aiohttp

from warmgw.config import HealthParams
from warmgw.core import spread
from warmgw.core.clock import FakeClock
from warmgw.core.lifecycle import State
from warmgw.core.model import EndpointSpec
from warmgw.core.policy import TrafficPolicy
from warmgw.core.registry import LifecycleParams, Registry
from warmgw.core.warm import WarmProfile
from warmgw.replicas import Replicas
from warmgw.supervisor import Supervisor
from warmgw.warmup import WarmResult


def emfile() -> aiohttp.ClientConnectorError:
    key = SimpleNamespace(host="127.0.0.9", port=8000, ssl=False)
    return aiohttp.ClientConnectorError(key, OSError(errno.EMFILE, "Too many open files"))


class Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    async def read(self) -> bytes:
        return self.body

    async def json(self, content_type: str | None = None) -> Any:
        return json.loads(self.body)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class Session:
    """Answers /health, /v1/models and /metrics like a healthy vLLM; the first `short`
    connections fail with EMFILE, as when the gateway has no file descriptor left."""

    def __init__(self, clock: FakeClock, short: int = 0) -> None:
        self.clock = clock
        self.short = short
        self.gets: list[tuple[float, str]] = []

    def get(self, url: str, timeout: object = None) -> Response:
        self.gets.append((self.clock.now(), url))
        if self.short > 0:
            self.short -= 1
            raise emfile()
        if url.endswith("/v1/models"):
            return Response(200, json.dumps({"data": [{"id": "tiny"}]}).encode())
        if url.endswith("/metrics"):
            return Response(200, b"process_start_time_seconds 1.0\n")
        return Response(200, b"")


class Warmer:
    """Fails the first `short` warmups with EMFILE, then converges."""

    def __init__(self, short: int) -> None:
        self.short = short
        self.calls = 0
        self.requests_sent = self.refused = 0

    async def warm(self, *args: Any, **kwargs: Any) -> WarmResult:
        self.calls += 1
        if self.calls <= self.short:
            raise emfile()
        return WarmResult(True, 1, 0.1, 4, {}, ())


def setup(n: int, interval: float, session: Session, warmer: Warmer | None = None
          ) -> tuple[FakeClock, Registry, Replicas, Supervisor]:
    clock = session.clock
    reg = Registry(LifecycleParams(), clock, TrafficPolicy.single("blue"))
    replicas = Replicas(reg)

    async def sleep(seconds: float) -> None:  # time moves only as the code under test waits
        await asyncio.sleep(0)  # what was started before the wait runs at its own time
        clock.advance(seconds)

    sup = Supervisor(reg, replicas, session, warmer or Warmer(0),  # type: ignore[arg-type]
                     WarmProfile(), HealthParams(interval=interval), clock, sleep=sleep)
    return clock, reg, replicas, sup


def test_phases_are_stable_and_cover_the_interval() -> None:
    names = [f"r{i}" for i in range(1000)]
    assert [spread.phase(n) for n in names] == [spread.phase(n) for n in names]
    groups = spread.slices(names, 50)
    assert sorted(n for g in groups for n in g) == sorted(names)  # each name once
    sizes = [len(g) for g in groups]
    assert max(sizes) <= 40 and min(sizes) >= 5, sizes  # ~20 each, none piled up
    assert spread.slice_count(1.0) == 50 and spread.slice_count(0.001) == 1


async def test_each_replica_is_checked_once_an_interval_at_its_own_offset() -> None:
    n, interval = 200, 1.0
    session = Session(FakeClock(1000.0))
    clock, reg, _, sup = setup(n, interval, session)
    for i in range(n):
        reg.add(EndpointSpec(f"r{i}", f"http://127.0.0.{i + 1}:8000", "blue", "tiny"))
        reg.probe_ok(f"r{i}", frozenset({"tiny"}), 4096, 1.0)  # warming: health-checked
    t0 = clock.now() + interval / spread.slice_count(interval)  # the first slice's turn
    await sup.start()
    try:
        for _ in range(2000):
            if len(session.gets) >= 3 * n:
                break
            await asyncio.sleep(0)
    finally:
        await sup.stop()
    health = [(t, url) for t, url in session.gets if url.endswith("/health")][:3 * n]
    assert len(health) == 3 * n
    per_interval: dict[int, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)
    for t, url in health:
        per_interval[int((t - t0) // interval)][url] += 1
    assert sorted(per_interval) == [0, 1, 2]
    for counts in per_interval.values():
        assert len(counts) == n and set(counts.values()) == {1}  # every replica, once
    burst = collections.Counter(t for t, _ in health)
    assert len(burst) >= 3 * 40  # spread over most of the 50 slices of each interval
    assert max(burst.values()) <= 15  # never a burst of all 200
    by_url: dict[str, list[float]] = collections.defaultdict(list)
    for t, url in health:
        by_url[url].append(t)
    for times in by_url.values():  # each at its own offset, one interval apart
        assert all(abs(b - a - interval) < 1e-6 for a, b in itertools.pairwise(times))


async def test_a_warmup_without_file_descriptors_waits_and_retries() -> None:
    session = Session(FakeClock(1000.0), short=3)  # the probe meets EMFILE too
    warmer = Warmer(short=2)
    _clock, reg, replicas, sup = setup(1, 1.0, session, warmer)
    replicas.react_with([sup])
    await replicas.start()
    await sup.start()
    try:
        reg.add(EndpointSpec("r0", "http://127.0.0.9:8000", "blue", "tiny"))
        for _ in range(2000):
            if reg.endpoints["r0"].state is State.RAMPING:
                break
            await asyncio.sleep(0)
    finally:
        await sup.stop()
        await replicas.stop()
    assert reg.endpoints["r0"].state is State.RAMPING  # warmed, never failed or ejected
    assert warmer.calls == 3
    assert sup.warmups == {"converged": 1}
    assert reg.transitions_total.get(State.EJECTED, 0) == 0
