"""`warmgw demo`: simulated vLLM replicas, the gateway and client traffic, narrated live.

Everything runs in this process: five simulated replicas with a realistic cold start
(two blue at first, a third blue one that joins later, two green ones on standby), the
gateway on a free port, and closed-loop client workers. The demo adds a replica and
restarts one mid-way, cuts over from blue to green, then says whether any user request
reached a cold replica.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
import uvloop

from warmgw.app import Gateway
from warmgw.config import Config, parse
from warmgw.core.clock import Clock
from warmgw.core.lifecycle import ROUTABLE
from warmgw.demo_view import Sample, View
from warmgw.reactor import consume
from warmgw.sim import SimConfig, SimFleet, SimReplica

COLD = SimConfig(
    ttft_base=0.03, ttft_per_prompt_token=0.00005, itl=0.004, max_running=8, jitter=0.05,
    cold_shape_penalty=1.5, cold_batch_penalty=0.8,
    load_time=1.0, refuse_while_loading=True,  # like vLLM: the port opens once loaded
)
BLUE, LATE, GREEN = ("blue-1", "blue-2"), "blue-3", ("green-1", "green-2")
RESTARTED = "green-1"
WARMUP = {
    "prompt_lengths": [16, 256, 1024], "max_tokens": [4], "concurrency": [1, 2, 4, 8],
    "tolerance": 0.3, "abs_tolerance": 0.01, "deadline": 30, "max_concurrent": 4,
}
WORKERS = 7
PROMPT_WORDS = (8, 100, 600)  # short, medium, long: the 16 / 256 / 1024 token buckets
TABLE_EVERY = 2.0


def gateway_config(urls: dict[str, str], token: str) -> Config:
    """The gateway's config, built as a dict like a YAML file would be."""
    pool = {n: "green" if n.startswith("green") else "blue" for n in urls}
    return parse({
        "listen": {"port": 0},
        "admin": {"port": 0, "token": token},
        "policy": {"active": "blue"},
        "replicas": [{"name": n, "url": u, "pool": pool[n]} for n, u in urls.items()],
        "warmup": WARMUP,
        "health": {"interval": 0.5, "timeout": 1.0},
        "ramp": {"initial_weight": 0.05, "doubling_time": 1.5},
        # green (2 replicas) may take over from blue (3) once both green ones are warm
        "cutover": {"min_warm_fraction": 0.5},
    })


class Traffic:
    """Closed-loop users: each worker sends a request, waits for the answer, sends again."""

    def __init__(self, url: str, workers: int, clock: Clock, seed: int = 1) -> None:
        self.url = url
        self.clock = clock
        self.workers = workers
        self.seed = seed
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Traffic:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
        )
        self._tasks = [
            asyncio.create_task(self._worker(self._session, random.Random(self.seed * 100 + i)))
            for i in range(self.workers)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._session is not None:
            await self._session.close()

    async def _worker(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        while not self._stop.is_set():
            text = " ".join(["word"] * rng.choice(PROMPT_WORDS))
            stream = rng.random() < 0.5
            body: dict[str, Any] = {
                "model": "tiny", "max_tokens": rng.choice((8, 16, 32)), "stream": stream,
            }
            if rng.random() < 0.5:
                body["messages"] = [{"role": "user", "content": text}]
                path = "/v1/chat/completions"
            else:
                body["prompt"] = text
                path = "/v1/completions"
            self.samples.append(await self._one(session, path, body, stream))

    async def _one(
        self, session: aiohttp.ClientSession, path: str, body: dict[str, Any], stream: bool
    ) -> Sample:
        now = self.clock.now
        t0 = now()
        try:
            async with session.post(self.url + path, data=json.dumps(body),
                                    headers={"Content-Type": "application/json"}) as r:
                if r.status != 200:
                    text = (await r.text())[:160]
                    return Sample(now(), now() - t0, False, f"HTTP {r.status}: {text}")
                if not stream:
                    await r.read()
                    return Sample(now(), now() - t0, True)
                ttfb = -1.0
                data = b""
                async for chunk in r.content.iter_any():
                    if ttfb < 0:
                        ttfb = now() - t0
                    data += chunk
                ok = data.rstrip().endswith(b"data: [DONE]") and b'"error"' not in data
                return Sample(now(), ttfb, ok, "" if ok else "stream cut")
        except (aiohttp.ClientError, TimeoutError) as e:
            return Sample(now(), now() - t0, False, repr(e))


async def wait_until(cond: Callable[[], bool], timeout: float, clock: Clock) -> bool:
    deadline = clock.now() + timeout
    while not cond():
        if clock.now() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _story(seconds: float) -> int:
    names = (*BLUE, LATE, *GREEN)
    fleet = SimFleet([dataclasses.replace(COLD, seed=i) for i in range(len(names))])
    async with fleet:
        replicas = dict(zip(names, fleet.replicas, strict=True))
        for name, replica in replicas.items():
            replica.name = name  # the sim's own log lines (--log-level debug) say blue-1 too
        urls = {n: r.url for n, r in replicas.items()}
        token = secrets.token_urlsafe(12)
        gw = Gateway(gateway_config({n: u for n, u in urls.items() if n != LATE}, token))
        view = View(gw.clock.now)
        view.intro(BLUE, GREEN, LATE, seconds)
        narrate = asyncio.create_task(consume(gw.registry.subscribe(), view.transition))
        try:
            async with gw:
                view.hint(gw.admin_url, token)
                if not await _wait_blue(gw, view):
                    return 1
                scene = Scene(gw, view, replicas, lambda: gateway_config(urls, token))
                async with Traffic(gw.url, WORKERS, gw.clock) as traffic:
                    elapsed = await scene.play(traffic, seconds)
                scene.table(traffic.samples)
        finally:
            narrate.cancel()
            await asyncio.gather(narrate, return_exceptions=True)
        return 0 if view.summary(traffic.samples, replicas, elapsed) else 1


async def _wait_blue(gw: Gateway, view: View) -> bool:
    eps = gw.registry.endpoints

    def blue_routable() -> bool:
        return all(n in eps and eps[n].state in ROUTABLE for n in BLUE)

    if not await wait_until(blue_routable, 60.0, gw.clock):
        view.say("FAILED: the blue replicas did not finish warming within 60 s.")
        return False
    view.event(
        f"user traffic starts, through the gateway at {gw.url}:",
        f"{WORKERS} clients in a closed loop, short/medium/long prompts, streaming and not.",
    )
    return True


class Scene:
    """The traffic phase: a table every TABLE_EVERY seconds; a blue replica joins a fifth
    of the way in, a green one restarts at two fifths, and blue is cut over to green at
    seven tenths (refused, and asked again, while green is not warm)."""

    def __init__(
        self, gw: Gateway, view: View, replicas: dict[str, SimReplica],
        full_config: Callable[[], Config],
    ) -> None:
        self.gw = gw
        self.view = view
        self.replicas = replicas
        self.full_config = full_config
        self.seen = 0  # samples already shown in a table
        self.last_table = gw.clock.now()
        self.retry_cutover_at: float | None = None
        self.cutover_refusals = 0

    async def play(self, traffic: Traffic, seconds: float) -> float:
        clock = self.gw.clock
        start = self.last_table = clock.now()
        actions = [(0.2 * seconds, self._join), (0.4 * seconds, self._restart),
                   (0.7 * seconds, self._cutover)]
        while (now := clock.now()) < start + seconds:
            if actions and now - start >= actions[0][0]:
                await actions.pop(0)[1]()
            if self.retry_cutover_at is not None and now >= self.retry_cutover_at:
                await self._cutover()
            if now - self.last_table >= TABLE_EVERY:
                self.table(traffic.samples)
            await asyncio.sleep(0.05)
        return clock.now() - start

    def table(self, samples: list[Sample]) -> None:
        """The fleet now, and the user requests that finished since the last table."""
        now = self.gw.clock.now()
        window = samples[self.seen :]
        self.view.table(self.gw.registry, self.replicas, window, now - self.last_table)
        self.seen = len(samples)
        self.last_table = now

    async def _join(self) -> None:
        self.view.event(
            f"a new replica joins: {LATE}. The gateway warms it before any user request",
            "reaches it, then ramps its weight up.",
        )
        self.gw.static.reload(self.full_config())

    async def _restart(self) -> None:
        self.view.event(
            f"{RESTARTED}'s process restarts (a crash, an OOM kill): it comes back cold.",
            "The gateway notices, takes it out and warms it again, so a cutover to green",
            "never lands on a cold replica.",
        )
        await self.replicas[RESTARTED].restart()


    async def _cutover(self) -> None:
        """Blue to green through the admin API, as an operator would (warmgw cutover green)."""
        gw = self.gw
        headers = {"Authorization": f"Bearer {gw.config.admin.token}"}
        async with aiohttp.ClientSession() as s, s.post(
            gw.admin_url + "/admin/v1/cutover", json={"to": "green"}, headers=headers
        ) as r:
            body = await r.json()
        if r.status == 200:
            self.retry_cutover_at = None
            self.view.event(
                "cutover: new requests go to green from now on; blue's in-flight requests",
                "and streams finish there, and blue stays warm for an instant rollback.",
            )
        elif r.status == 409 and self.cutover_refusals < 1:
            self.cutover_refusals += 1
            self.retry_cutover_at = gw.clock.now() + 2.0
            self.view.event(
                "cutover to green asked for, and refused: the gateway will not send users",
                f"to a cold pool. It said: {body['error']['message']}",
            )
        elif r.status == 409:
            self.retry_cutover_at = gw.clock.now() + 2.0  # still cold: ask again, quietly
        else:
            self.retry_cutover_at = None
            self.view.event(f"cutover failed: {r.status} {body}")


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when no user request reached a cold replica and none failed."""
    if getattr(args, "log_level", "info") == "info":
        # The demo narrates transitions itself; keep the gateway's own lines for problems.
        logging.getLogger("warmgw").setLevel(logging.WARNING)
    seconds = float(getattr(args, "seconds", 40.0))
    if not seconds > 0:
        print(f"warmgw demo: --seconds must be > 0, got {seconds:g}")
        return 2
    return uvloop.run(_story(seconds))
