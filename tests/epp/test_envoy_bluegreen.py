"""Blue-green within one InferencePool (the pools are a pod label) with warmgw as Envoy's
endpoint picker: the admin API's instant cutover under streaming load, through a real
Envoy, and what users see when the endpoint picker restarts while Envoy serves.

Which replica served what is read from the replicas' own request logs. Requests are marked
by their prompt size: the users switch to long prompts the moment the admin call has
returned, so "sent after the cutover" is exact, not a race on timestamps."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.epp.conftest import ENVOY
from tests.epp.envoy import Envoy, config
from tests.helpers import gateway_config, wait_all_ready, wait_for
from tests.test_cli_ops import warmgw
from warmgw.app import Gateway
from warmgw.sim import SimConfig, SimFleet, SimReplica

# streams of 40 tokens at 5 ms each: 0.2 s, so a cutover always finds some open
STREAMY = SimConfig(ttft_base=0.002, itl=0.005)
TOKEN = "admin-token"
SHORT, LONG = "a b c", " ".join(["word"] * 60)  # before / after the admin call returned


def user_log(replica: SimReplica) -> list[Any]:
    return [r for r in replica.log if not r.warmup]


def bg_config(fleet: SimFleet, epp_port: int = 0) -> Any:
    b0, b1, g0, g1 = fleet.replicas
    replicas = [{"name": n, "url": r.url, "pool": p}
                for n, r, p in (("b0", b0, "blue"), ("b1", b1, "blue"),
                                ("g0", g0, "green"), ("g1", g1, "green"))]
    return gateway_config([], replicas=replicas, epp={"listen": {"port": epp_port}},
                          admin={"port": 0, "token": TOKEN}, policy={"active": "blue"})


@dataclass
class Users:
    """Streaming users through Envoy until stop; each stream read to its end."""

    url: str
    after: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    statuses: Counter[int] = field(default_factory=Counter)
    cut: list[str] = field(default_factory=list)  # streams that did not end with [DONE]
    sent_after: int = 0
    times: list[tuple[float, int]] = field(default_factory=list)  # (sent at, status)

    async def user(self, s: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            late = self.after.is_set()
            body = {"model": "tiny", "prompt": LONG if late else SHORT, "max_tokens": 40,
                    "stream": True}
            self.sent_after += late
            t = time.monotonic()
            try:
                async with s.post(self.url + "/v1/completions", json=body) as r:
                    data = await r.read()
                    self.statuses[r.status] += 1
                    self.times.append((t, r.status))
                    if r.status == 200 and not data.rstrip().endswith(b"data: [DONE]"):
                        self.cut.append(data[-200:].decode(errors="replace"))
                    if r.status != 200:
                        await asyncio.sleep(0.02)
            except aiohttp.ClientError as e:
                self.statuses[0] += 1
                self.times.append((t, 0))
                self.cut.append(repr(e))

    async def run(self, workers: int) -> None:
        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(self.user(s) for _ in range(workers)))


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(STREAMY, replicas=4, distinct_hosts=True, host="127.0.0.41") as f:
        yield f


@pytest.mark.timeout(120)
async def test_instant_cutover_under_streaming_load_cuts_nothing(fleet: SimFleet,
                                                                 tmp_path: Path) -> None:
    assert ENVOY is not None
    b0, b1, g0, g1 = fleet.replicas
    async with Gateway(bg_config(fleet)) as gw:
        await wait_all_ready(gw)
        async with Envoy(ENVOY, config(gw.epp_port), tmp_path) as envoy:
            users = Users(envoy.url)
            task = asyncio.create_task(users.run(workers=6))
            try:
                await wait_for(lambda: len(user_log(b0)) + len(user_log(b1)) >= 30, 30,
                               "blue traffic")
                assert not user_log(g0) and not user_log(g1)  # blue serves alone
                # the operator's CLI (the admin API underneath), exactly as for the proxy
                code, out, err = await warmgw(gw, "cutover", "green", "--from", "blue",
                                              token=TOKEN)
                assert code == 0, err
                assert "blue -> green (instant)" in out
                returned = time.monotonic()
                users.after.set()
                await wait_for(lambda: users.sent_after >= 60, 30, "requests after")
            finally:
                users.stop.set()
                await task
    blue = user_log(b0) + user_log(b1)
    green = user_log(g0) + user_log(g1)
    # streams open on blue at the switch (the gateway's record, same monotonic clock as
    # the replicas'): they exist, and they all ran to the end
    switched = gw.bluegreen.history[-1].started
    assert switched < returned
    open_then = [r for r in blue if r.start < switched < r.start + r.duration]
    assert open_then, "no blue stream was open at the cutover: the test proves nothing"
    assert all(r.outcome == "ok" and r.status == 200 for r in blue), Counter(
        r.outcome for r in blue)
    assert not users.cut, users.cut[:3]
    assert set(users.statuses) == {200}, users.statuses
    # every request sent after the call returned went to green (replicas' own logs)
    long_tokens = min(r.prompt_tokens for r in green if r.prompt_tokens > 30)
    assert not [r for r in blue if r.prompt_tokens >= long_tokens]
    assert sum(r.prompt_tokens >= long_tokens for r in green) >= 60
    assert all(r.outcome == "ok" for r in green)
    assert all(e.inflight == 0 for e in gw.registry.endpoints.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
async def test_endpoint_picker_restart_while_envoy_serves(fleet: SimFleet,
                                                          tmp_path: Path) -> None:
    """failure_mode_allow false (FailClose): while no EPP answers, Envoy fails the requests
    itself (500 when the ext_proc stream cannot open); streams already open finish inside
    the EPP's shutdown grace; once back, the new EPP warms the replicas again and answers
    503 + Retry-After until one is ready. Nothing reaches a replica unpicked."""
    assert ENVOY is not None
    port = free_port()
    cfg = bg_config(fleet, port)
    gw = Gateway(cfg)
    await gw.__aenter__()
    try:
        await wait_all_ready(gw)
        async with Envoy(ENVOY, config(port), tmp_path) as envoy:
            users = Users(envoy.url)
            task = asyncio.create_task(users.run(workers=4))
            try:
                await wait_for(lambda: sum(len(user_log(r)) for r in fleet.replicas[:2]) >= 20,
                               30, "blue traffic")
                before = dict(users.statuses)
                down_at = time.monotonic()
                await gw.__aexit__(None, None, None)  # SIGTERM: grace for open streams
                stopped_at = time.monotonic()
                await asyncio.sleep(1.0)  # the EPP is away
                gw = Gateway(cfg)
                await gw.__aenter__()
                up_at = time.monotonic()
                await wait_all_ready(gw)
                ready_at = time.monotonic()
                ok_before = users.statuses[200]
                await wait_for(lambda: users.statuses[200] >= ok_before + 20, 30,
                               "answers from the new EPP")
            finally:
                users.stop.set()
                await task
    finally:
        await gw.__aexit__(None, None, None)
    assert before.keys() == {200}
    during = Counter(s for t, s in users.times if down_at <= t < up_at)
    warming = Counter(s for t, s in users.times if up_at <= t < ready_at)
    after = Counter(s for t, s in users.times if t >= ready_at + 0.5)
    print(f"EPP restart: stop took {stopped_at - down_at:.2f}s, away 1.0s, "
          f"re-warm {ready_at - up_at:.2f}s; while away {dict(during)}, "
          f"while warming {dict(warming)}, total {dict(users.statuses)}")
    assert not users.cut, users.cut[:3]  # no stream cut midway: they ended in the grace
    assert set(during) <= {200, 500, 503} and (during[500] + during[503]) > 0, during
    assert set(warming) <= {200, 500, 503}, warming
    assert set(after) == {200}, after
    # refusals are Envoy's or the EPP's: no replica ever saw an unpicked request
    assert all(r.outcome == "ok" for rep in fleet.replicas for r in user_log(rep))
