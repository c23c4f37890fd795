"""Replicas that misbehave, over real sockets: the simulator's fault injection behind a real
gateway. In every case the clients of the healthy replicas see no error at all, and the
clients of the faulty one get a clear error (never a hang, never a short answer passed off
as a whole one)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.helpers import wait_all_ready, wait_for, wait_state
from tests.reliability.common import Traffic, body, call, path, quick_config
from warmgw.app import Gateway
from warmgw.core.lifecycle import ROUTABLE, State
from warmgw.sim import SimConfig, SimFleet, SimReplica

pytestmark = pytest.mark.timeout(60)

SIM = SimConfig(ttft_base=0.004, itl=0.002)


async def started(n: int = 3, **extra: Any) -> tuple[SimFleet, Gateway]:
    fleet = SimFleet(SIM, replicas=n)
    await fleet.start()
    gw = Gateway(quick_config(fleet.urls, **extra))
    try:
        await gw.start()
        await wait_all_ready(gw, timeout=20)
    except BaseException:
        await gw.stop()
        await fleet.stop()
        raise
    return fleet, gw


@pytest.fixture
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[tuple[SimFleet, Gateway]]:
    marker = request.node.get_closest_marker("gateway")
    fleet, gw = await started(**(marker.kwargs if marker else {}))
    try:
        yield fleet, gw
    finally:
        await gw.stop()
        await fleet.stop()


async def settled(fleet: SimFleet, gw: Gateway) -> None:
    """Nothing left in flight: not in the gateway, not on any replica."""
    await wait_for(
        lambda: all(e.inflight == 0 for e in gw.registry.endpoints.values())
        and all(r.process.scheduler.running == 0 for r in fleet.replicas),
        5.0, "in-flight requests to drain",
    )


def warmed_before_traffic(gw: Gateway, replica: SimReplica, name: str, since: float) -> None:
    """After `since`, every time `name` became routable it had been warming first, and no
    user request reached the replica while it was warming."""
    history = [t for t in gw.registry.history if t.name == name and t.at >= since]
    came_back = [t for t in history if t.to in ROUTABLE and t.frm not in ROUTABLE]
    assert came_back, f"{name} never came back: {history}"
    assert all(t.frm is State.WARMING for t in came_back), history
    assert all(t.frm is State.PROBING for t in history if t.to is State.WARMING), history
    warming = [(t.at, nxt.at) for t, nxt in itertools.pairwise(history)
               if t.to is State.WARMING]
    users = [rec.start for rec in replica.log if not rec.warmup and rec.start >= since]
    for a, b in warming:
        assert not [u for u in users if a + 0.02 < u < b], "user traffic during warmup"
        assert any(rec.warmup and a <= rec.start <= b for rec in replica.log)


# -- connection refused -------------------------------------------------------------------


@pytest.mark.gateway(health={"interval": 4.0})  # user traffic, not the health loop, finds it
async def test_refused_connection_is_retried_on_another_replica(setup):
    fleet, gw = setup
    r0 = fleet.replicas[0]
    await r0.stop_listening()  # also drops the gateway's idle connections to it
    await asyncio.sleep(0.05)
    seen = r0.stats.user_requests
    async with Traffic(gw.url, clients=8) as t:
        await wait_for(lambda: gw.registry.endpoints["r0"].state not in ROUTABLE, 5.0)
        await asyncio.sleep(0.3)
        assert gw.registry.endpoints["r0"].errors >= 1  # a user request was refused by r0 ...
        assert t.errors() == []  # ... and retried elsewhere: no client saw it
        back = gw.clock.now()
        await r0.resume_listening()
        await wait_state(gw, "r0", State.READY, timeout=10)
        await asyncio.sleep(0.2)
    assert r0.stats.user_requests > seen  # it serves again, after ...
    warmed_before_traffic(gw, r0, "r0", back)  # ... being warmed again first
    assert t.errors() == [] and len(t.results) > 50
    await settled(fleet, gw)


# -- reset before the response ------------------------------------------------------------


@pytest.mark.gateway(outlier={"consecutive_errors": 1000},
                     upstream={"retry_unanswered": False})
async def test_reset_before_the_response_is_a_clear_502_and_not_retried(setup):
    """With upstream.retry_unanswered off (on, a request whose connection was reset before
    any byte came back goes once more, to another replica: test_retry_unanswered.py and
    test_process_restarts.py)."""
    fleet, gw = setup
    r0 = fleet.replicas[0]
    r0.set_faults(drop_mid_stream=0)  # takes the request, then resets the connection
    sent, failed = 0, []
    async with aiohttp.ClientSession() as s, Traffic(gw.url, clients=4) as t:
        for _ in range(60):  # until r0 has had a few
            res = await call(s, gw.url, stream=False, chat=sent % 2 == 0)
            sent += 1
            if not res.ok:
                failed.append(res)
            if len(failed) >= 3:
                break
    assert len(failed) >= 3
    for res in failed:
        assert res.status == 502 and res.replica == "r0", res
        assert '"type": "upstream_error"' in res.error and "failed before answering" in res.error
    # the background clients: only r0's requests failed (its streams end in an error event)
    assert t.errors(but="r0") == []
    sent += len(t.results)
    failed += t.errors()
    dropped = [rec for rec in r0.log if not rec.warmup and rec.outcome == "dropped"]
    assert len(dropped) == len(failed)
    # each request reached exactly one replica: the reset ones were not sent again
    assert sum(r.stats.user_requests for r in fleet.replicas) == sent
    await settled(fleet, gw)


# -- dying mid-stream ---------------------------------------------------------------------


@pytest.mark.gateway(outlier={"consecutive_errors": 1000})
async def test_death_mid_stream_ends_the_stream_with_an_error_event(setup):
    fleet, gw = setup
    r0 = fleet.replicas[0]
    r0.set_faults(drop_mid_stream=3)  # three SSE events, then the connection is aborted
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    cut, whole = 0, 0
    async with client, Traffic(gw.url, clients=3) as t:
        for i in range(60):
            stream = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=6,
                stream=True,
            )
            who = stream.response.headers["X-Warmgw-Replica"]
            try:
                text = "".join([c.choices[0].delta.content or "" async for c in stream
                                if c.choices])
            except openai.APIError as e:
                assert who == "r0"
                assert "r0 failed mid-stream" in e.message
                assert e.body is not None and e.body["type"] == "upstream_error"  # type: ignore[index]
                cut += 1
            else:
                assert who != "r0" and text
                whole += 1
            if cut >= 3 and whole >= 3:
                break
        # the raw stream: some data events, then one error event, no [DONE]
        async with aiohttp.ClientSession() as s:
            for _ in range(60):
                async with s.post(gw.url + path(True), json=body(True, True, 6)) as r:
                    data = await r.read()
                    if r.headers["X-Warmgw-Replica"] == "r0":
                        break
        events = [e for e in data.split(b"\n\n") if e]
        assert events[-1].startswith(b'data: {"error": {"message": "replica r0 failed mid-str')
        assert b"[DONE]" not in data and len(events) == 4
    assert cut >= 3 and whole >= 3
    assert t.errors(but="r0") == []
    await settled(fleet, gw)


# -- a replica that goes silent -------------------------------------------------------------


@pytest.mark.gateway(upstream={"read_timeout": 1.0})
async def test_silent_replica_times_out_with_504_and_gets_ejected(setup):
    fleet, gw = setup
    r0 = fleet.replicas[0]
    r0.set_faults(hang=True)  # takes requests, never sends a byte
    async with Traffic(gw.url, clients=6) as t:
        await wait_for(lambda: gw.registry.endpoints["r0"].state not in ROUTABLE, 10.0,
                       "r0 to be ejected")
        await asyncio.sleep(0.3)
    hung = t.errors()
    assert hung, "no request reached the silent replica"
    for res in hung:  # stream or not, nothing had been sent yet: a 504 in the OpenAI shape
        assert res.status == 504 and res.replica == "r0", res
        assert "no bytes within the read timeout" in res.error
    ejected = next(x for x in gw.registry.history if x.name == "r0" and x.to is State.EJECTED)
    assert ejected.reason.startswith("3 consecutive errors")
    r0.set_faults(hang=False)
    await settled(fleet, gw)


@pytest.mark.gateway(upstream={"read_timeout": 1.0}, outlier={"consecutive_errors": 1000})
async def test_stream_that_goes_silent_is_cut_but_a_slow_steady_one_lives(setup):
    fleet, gw = setup
    r0, r1 = fleet.replicas[0], fleet.replicas[1]
    r0.set_faults(slow_drip=3.0)  # a first event, then silence longer than read_timeout
    r1.set_faults(slow_drip=0.3)  # an event every 0.3 s: 2.4 s in all, > read_timeout
    results: dict[str, list[tuple[float, bytes]]] = {"r0": [], "r1": [], "r2": []}

    async def one(s: aiohttp.ClientSession) -> None:
        t0 = time.monotonic()
        async with s.post(gw.url + path(False), json=body(True, False, 8)) as r:
            data = await r.read()
            results[r.headers["X-Warmgw-Replica"]].append((time.monotonic() - t0, data))

    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            await asyncio.gather(*(one(s) for _ in range(6)))
            if results["r0"] and results["r1"]:
                break
    assert results["r0"] and results["r1"]
    for took, data in results["r0"]:
        assert 0.9 < took < 2.5
        assert data.count(b'"text"') == 1  # the first token came through
        assert b'"code": 504' in data and b"no bytes within the read timeout" in data
        assert b"[DONE]" not in data
    for _, data in results["r1"] + results["r2"]:
        assert data.count(b'"text"') == 8 and data.rstrip().endswith(b"data: [DONE]")
        assert b'"error"' not in data
    assert min(took for took, _ in results["r1"]) > 2.0  # longer than read_timeout in total
    await settled(fleet, gw)


async def test_slow_drip_streams_complete_and_disturb_no_one(setup):
    fleet, gw = setup
    fleet.replicas[0].set_faults(slow_drip=0.25)  # 0.25 s between events, steady
    async with Traffic(gw.url, clients=6, max_tokens=6) as t:
        await asyncio.sleep(3.0)
    slow = [r for r in t.results if r.replica == "r0"]
    assert slow and len(t.results) > len(slow) + 50
    assert t.errors() == []
    await settled(fleet, gw)


# -- 5xx bursts -----------------------------------------------------------------------------


async def test_5xx_burst_ejects_the_replica_which_comes_back_warmed(setup):
    fleet, gw = setup
    r0 = fleet.replicas[0]
    async with Traffic(gw.url, clients=6) as t:
        await asyncio.sleep(0.3)
        r0.set_faults(error_rate=1.0)
        await wait_for(lambda: gw.registry.endpoints["r0"].state not in ROUTABLE, 5.0,
                       "r0 to be ejected")
        assert "consecutive errors" in gw.registry.endpoints["r0"].reason
        burst = len(t.errors())
        await asyncio.sleep(0.5)
        assert len(t.errors()) == burst  # nothing more once it is out
        healed = gw.clock.now()
        r0.clear_faults()
        await wait_state(gw, "r0", State.READY, timeout=10)
        await asyncio.sleep(0.3)
    errors = t.errors()
    # only r0's requests failed: the ones that reached it before it was ejected
    assert errors and all(e.replica == "r0" and e.status == 500 for e in errors)
    assert len(errors) <= 3 + 6  # consecutive_errors, plus those already in flight
    assert t.errors(but="r0") == []
    warmed_before_traffic(gw, r0, "r0", healed)
    await settled(fleet, gw)


# -- flapping -------------------------------------------------------------------------------


async def test_flapping_replica_is_rewarmed_each_time_and_costs_only_its_requests(setup):
    fleet, gw = setup
    r0 = fleet.replicas[0]
    probes: list[float] = []
    sup = gw.supervisor
    assert sup is not None
    probe_once = sup.probe_once

    async def spy(ep: Any) -> Any:
        if ep.name == "r0":
            probes.append(gw.clock.now())
        return await probe_once(ep)

    sup.probe_once = spy  # type: ignore[method-assign]
    start = gw.clock.now()
    flaps = 4
    async with Traffic(gw.url, clients=6) as t:
        await asyncio.sleep(0.3)
        for _ in range(flaps - 1):  # short outages, and short lives in between
            await r0.stop_listening()
            await asyncio.sleep(0.5)
            await r0.resume_listening()
            await asyncio.sleep(0.8)
        await wait_state(gw, "r0", State.READY, timeout=10)
        await r0.stop_listening()  # a long one: the gateway backs off while it is down
        down = gw.clock.now()
        await asyncio.sleep(2.5)
        await r0.resume_listening()
        await wait_state(gw, "r0", State.READY, timeout=10)
    gaps = [b - a for a, b in itertools.pairwise(probes) if a >= down]
    assert 3 <= len(gaps) <= 8, gaps  # not a probe every interval/4 (0.05 s): ~50 of them
    assert gaps[0] < 0.25 and max(gaps) > 0.7, gaps
    assert all(b > a - 0.05 for a, b in itertools.pairwise(gaps)), gaps
    # every comeback went through warming first
    warmed_before_traffic(gw, r0, "r0", start)
    ejections = [x for x in gw.registry.history
                 if x.name == "r0" and x.to is State.EJECTED and x.at >= start]
    assert len(ejections) >= flaps - 1
    # users saw errors only for requests r0 had taken when it dropped them (those it had
    # not answered at all go once more: fewer errors than cut requests)
    errors = t.errors()
    assert all(e.replica == "r0" for e in errors), [e for e in errors if e.replica != "r0"]
    cut = [rec for rec in r0.log if not rec.warmup and rec.outcome != "ok"]
    assert len(errors) <= len(cut) + flaps
    assert len(t.results) > 200
    await settled(fleet, gw)


# -- a replica that breaks HTTP itself -----------------------------------------------------


class BrokenReplica:
    """Just enough of vLLM over a raw socket to be probed (/health, /v1/models), then
    inference answers broken by `mode`: garbage instead of HTTP, a chunked JSON body cut
    off, or an SSE stream cut in the middle of an event."""

    MODELS = b'{"object": "list", "data": [{"id": "tiny", "max_model_len": 4096}]}'

    def __init__(self) -> None:
        self.mode = "garbage"
        self.port = 0

    async def __aenter__(self) -> BrokenReplica:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    @staticmethod
    def _answer(status: bytes, ctype: bytes, payload: bytes) -> bytes:
        return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
                + b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            for _ in range(1000):
                head = await r.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await r.readexactly(length)
                if target == b"/health":
                    w.write(self._answer(b"200 OK", b"text/plain", b""))
                elif target == b"/v1/models":
                    w.write(self._answer(b"200 OK", b"application/json", self.MODELS))
                elif not target.startswith(b"/v1/"):
                    w.write(self._answer(b"404 Not Found", b"text/plain", b""))
                elif self.mode == "garbage":
                    w.write(b"SPDY/9 banana\r\n\r\n")
                    break
                elif self.mode == "chunked-cut":
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n8\r\n{\"id\": 1\r\n")
                    await w.drain()
                    break
                else:  # sse-cut-mid-event
                    part = b'data: {"id": 1}\n\ndata: {"id": '
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n"
                            % (len(part), part))
                    await w.drain()
                    break
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            w.transport.abort()


async def test_replica_speaking_broken_http_gets_clear_errors():
    async with BrokenReplica() as broken:
        url = f"http://127.0.0.1:{broken.port}"
        cfg = quick_config([url], strategy="round_robin",
                           outlier={"consecutive_errors": 1000})
        async with Gateway(cfg) as gw, aiohttp.ClientSession() as s:
            await wait_all_ready(gw, timeout=10)
            async with s.post(gw.url + path(False), json=body(False, False)) as r:
                assert r.status == 502  # not a 500 from an exception the proxy missed
                err = (await r.json())["error"]
                assert err["type"] == "upstream_error" and err["code"] == "upstream_failed"
            broken.mode = "chunked-cut"  # a body that is not SSE: cut it off, as HTTP does
            async with s.post(gw.url + path(False), json=body(False, False)) as r:
                assert r.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()
            broken.mode = "sse-cut-mid-event"
            async with s.post(gw.url + path(False), json=body(True, False)) as r:
                data = await r.read()
            # the half event stays half, and the error is an event of its own
            events = data.split(b"\n\n")
            assert events[0] == b'data: {"id": 1}' and events[1] == b'data: {"id": '
            assert json.loads(events[2][len(b"data: "):])["error"]["code"] == 502
            assert events[3:] == [b""]
            assert gw.registry.endpoints["r0"].errors == 3
            assert gw.registry.endpoints["r0"].inflight == 0
