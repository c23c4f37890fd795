"""Replicas restarted one at a time under keep-alive load, as real processes: each simulated
replica is its own `python -m warmgw.sim` on its own loopback address, killed with a real
SIGKILL (a crash: the kernel resets its connections) or stopped with SIGTERM (it drains:
stops accepting, finishes what it has, exits), then started again on the same address.

SIGKILL: no non-streamed request fails (those it had taken, unanswered, go once more to
another replica), and the only failures are streams that had begun on the killed replica,
each ended with an SSE error event. SIGTERM: nothing fails and no stream is cut."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import wait_all_ready, wait_for, wait_state
from tests.reliability.common import body, path, quick_config, settle
from warmgw.app import Gateway
from warmgw.core.lifecycle import State

pytestmark = pytest.mark.timeout(90)

SIM_ARGS = ["--ttft-base", "0.01", "--itl", "0.01", "--max-running", "16",
            "--load-time", "0.3", "--refuse-while-loading", "--log-level", "warning"]
MAX_TOKENS = 20  # a stream lasts ~0.2 s: some are always in flight
_hosts = itertools.count(random.Random().randrange(20, 200) * 256)


def free_address() -> tuple[str, int]:
    n = next(_hosts)
    host = f"127.{n // 256 % 256}.{n % 256}.{7}"
    with socket.socket() as s:
        s.bind((host, 0))
        return host, int(s.getsockname()[1])


@dataclass
class ReplicaProcess:
    """One `python -m warmgw.sim --replicas 1`, restartable on the same address."""

    name: str
    host: str
    port: int
    seed: int
    log: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "warmgw.sim", "--replicas", "1", "--host", self.host,
                "--base-port", str(self.port), "--seed", str(self.seed), *SIM_ARGS,
                stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await self.proc.stdout.readline()).decode()
        assert f"at {self.url}" in line, (line, self.log.read_text()[-2000:])

    async def signal(self, sig: signal.Signals, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@dataclass(frozen=True, slots=True)
class Outcome:
    stream: bool
    status: int
    replica: str
    whole: bool  # 200 and a whole answer ([DONE] for a stream, choices otherwise)
    error_event: bool  # a stream that ended with an SSE error event
    detail: str = ""


@dataclass
class Load:
    """Closed-loop keep-alive clients, half streams, until stopped (bounded either way)."""

    url: str
    clients: int = 8
    limit: int = 4000
    outcomes: list[Outcome] = field(default_factory=list)

    async def __aenter__(self) -> Load:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        self._tasks = [asyncio.create_task(self._client(random.Random(i)))
                       for i in range(self.clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def _client(self, rng: random.Random) -> None:
        while not self._stop.is_set() and len(self.outcomes) < self.limit:
            stream, chat = rng.random() < 0.5, rng.random() < 0.5
            self.outcomes.append(await self._one(stream, chat))

    async def _one(self, stream: bool, chat: bool) -> Outcome:
        try:
            async with self._session.post(self.url + path(chat),
                                          json=body(stream, chat, MAX_TOKENS)) as r:
                who = r.headers.get("X-Warmgw-Replica", "")
                data = await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            return Outcome(stream, 0, "", False, False, repr(e))
        if r.status != 200:
            return Outcome(stream, r.status, who, False, False, data[:300].decode())
        if stream:
            events = [json.loads(line[6:]) for line in data.split(b"\n")
                      if line.startswith(b"data: {")]
            errored = any("error" in e for e in events)
            whole = data.rstrip().endswith(b"data: [DONE]") and not errored
            return Outcome(True, 200, who, whole, errored, "" if whole else data[-300:].decode())
        ok = bool(json.loads(data).get("choices"))
        return Outcome(False, 200, who, ok, False, "" if ok else data[:300].decode())


async def busy(gw: Gateway, name: str, timeout: float = 3.0) -> bool:
    """Until the replica has a stream under way and a non-streamed request in flight (or
    timeout: the restart happens anyway, and False says so)."""
    ep = gw.registry.endpoints[name]

    def ready() -> bool:
        tickets = list(ep.tickets)
        return (any(t.facts.stream and t.ttfb >= 0 for t in tickets)
                and any(not t.facts.stream for t in tickets))

    return await settle(ready, timeout, every=0.005)


@pytest.mark.parametrize(("sig", "pooled"), [(signal.SIGKILL, True), (signal.SIGKILL, False),
                                             (signal.SIGTERM, True)],
                         ids=["kill", "kill-fresh-upstream", "term"])
async def test_each_replica_restarted_under_load(sig: signal.Signals, pooled: bool) -> None:
    """pooled False: the gateway keeps no upstream connection, so every request the killed
    replica had taken was sent on a fresh connection."""
    with tempfile.TemporaryDirectory() as tmp:
        replicas = []
        for i in range(3):
            host, port = free_address()
            replicas.append(ReplicaProcess(f"r{i}", host, port, i, Path(tmp) / f"r{i}.log"))
        try:
            await asyncio.gather(*(r.start() for r in replicas))
            cfg = quick_config({r.name: r.url for r in replicas},
                               upstream={"read_timeout": 5.0})
            async with Gateway(cfg) as gw:
                await wait_all_ready(gw, timeout=20)
                if not pooled:
                    gw.pool.keepalive = 0.0
                cut: dict[str, int] = {}
                caught = 0  # restarts with both kinds of request in flight
                async with Load(gw.url) as load:
                    await asyncio.sleep(0.5)
                    for r in replicas:
                        caught += await busy(gw, r.name)
                        t0 = len(load.outcomes)
                        code = await r.signal(sig)
                        assert code == (-signal.SIGKILL if sig is signal.SIGKILL else 0)
                        await r.start()
                        await wait_state(gw, r.name, State.READY, timeout=20)
                        await asyncio.sleep(0.3)
                        cut[r.name] = sum(o.error_event and o.replica == r.name
                                          for o in load.outcomes[t0:])
                outcomes = load.outcomes
                await wait_for(lambda: all(e.inflight == 0
                                           for e in gw.registry.endpoints.values()), 5.0)
        finally:
            for r in replicas:
                await r.close()
    streams = [o for o in outcomes if o.stream]
    plain = [o for o in outcomes if not o.stream]
    failed = [o for o in outcomes if not o.whole]
    assert len(plain) > 50 and len(streams) > 50, len(outcomes)
    assert caught >= 2  # the restarts did catch requests in flight
    assert [o for o in plain if not o.whole] == []  # no non-streamed request failed
    # every failure is a stream begun on a replica as it was killed, ended by an error event
    assert [o for o in failed if not (o.stream and o.status == 200 and o.error_event)] == []
    if sig is signal.SIGTERM:
        assert failed == [] and sum(cut.values()) == 0
    else:
        assert sum(cut.values()) == len(failed) >= 1
        print(f"\nSIGKILL: {len(outcomes)} requests, streams cut per replica: {cut}")
