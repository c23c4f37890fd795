"""The simulated vLLM fleet of one strategy's run: `python -m warmgw.sim` in its own process.

Every replica of the scenario (newcomers too) starts at the outset on its own port, with
the scenario's SimConfig and seed + i; a replica that no balancer knows yet gets no
request and stays cold. The runner reads the simulator's counters over HTTP
(GET /sim/stats: user_cold_hits, warmup_cold_hits, ...) and restarts a replica with
POST /sim/restart. With `fleet.processes: each`, each replica is its own process (replica
i with seed + i, as in one process), which `kill` (SIGKILL: a crash) or `term` (SIGTERM:
it drains, then exits) stops for real before it is started again on the same port.

`prewarm` warms the initial replicas directly (not through any balancer), so every
strategy starts from the same warm steady state and only newcomers are cold: the
workload's own requests (every prompt size, kind and feature mix it sends, built as it
builds them, so sized by the simulator's own tokenizer), max_running at a time, marked as
warmup (X-Warmgw-Warmup: 1) so they never count as user requests, repeated until a whole
round paid no first-use cost. `user_cold` reads, after the run, which user requests on
the newcomers paid one, and for what.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
import sys
import time
from dataclasses import dataclass, fields
from typing import Any

import aiohttp

from loadtest.procs import Child, Children, free_port
from loadtest.spec import Fleet, ReplicaDef, Workload
from loadtest.workload import every_request, request_for
from warmgw.sim import WARMUP_HEADER, SimConfig
from warmgw.sim.config import PENALTIES

LINE = re.compile(r"sim replica (\S+) serving model \S+ at (http://\S+)")
START_TIMEOUT = 20.0
DRAIN_TIMEOUT = 30.0  # s a SIGTERMed replica may take to finish its requests (--drain-timeout)
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}
PREWARM_ROUNDS = 5


@dataclass(frozen=True)
class Replica:
    name: str
    pool: str
    url: str

    @property
    def hostport(self) -> tuple[str, int]:
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        return host, int(port)


def sim_argv(config: SimConfig, n: int, port: int = 0) -> list[str]:
    argv = [sys.executable, "-m", "warmgw.sim", "--replicas", str(n), "--base-port", str(port),
            "--log-level", "warning", "--drain-timeout", str(DRAIN_TIMEOUT)]
    default = SimConfig()
    for f in fields(SimConfig):
        value = getattr(config, f.name)
        if value == getattr(default, f.name) or f.name == "embedding_dim":
            continue
        opt = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(opt)
        elif isinstance(value, tuple):
            argv += [opt, ",".join(str(v) for v in value)]
        else:
            argv += [opt, str(value)]
    return argv


class SimFleet:
    def __init__(self, kids: Children, fleet: Fleet, session: aiohttp.ClientSession,
                 name: str = "sim", argv: list[str] | None = None) -> None:
        """name: the child's (and its log's) name; argv: another command line that serves
        the same replicas and prints the same lines (default: python -m warmgw.sim)."""
        self.kids = kids
        self.name = name
        self.argv = argv
        self.fleet = fleet
        self.session = session
        self.replicas: dict[str, Replica] = {}
        self.pid = 0
        self._own: dict[str, tuple[Child, list[str]]] = {}  # processes: each
        self._starts = 0

    async def start(self) -> None:
        defs = self.fleet.replicas
        if self.fleet.processes == "each" and self.argv is None:
            for i, d in enumerate(defs):
                config = dataclasses.replace(self.fleet.sim, seed=self.fleet.sim.seed + i)
                argv = sim_argv(config, 1, free_port())
                child, url = await self._spawn(f"{self.name}-{d.name}", argv, 1)
                self.replicas[d.name] = Replica(d.name, d.pool, url["r0"])
                self._own[d.name] = (child, argv)
            self.pid = self._own[defs[0].name][0].pid
        else:
            argv = self.argv or sim_argv(self.fleet.sim, len(defs))
            child, found = await self._spawn(self.name, argv, len(defs))
            self.pid = child.pid
            # replica i of the simulator (named r{i}) is the scenario's i-th replica
            for i, d in enumerate(defs):
                self.replicas[d.name] = Replica(d.name, d.pool, found[f"r{i}"])
        await self.wait_loaded(list(self.replicas), START_TIMEOUT)

    async def _spawn(self, name: str, argv: list[str], n: int) -> tuple[Child, dict[str, str]]:
        """Start one simulator process; it, and its replicas' URLs by the simulator's
        names."""
        child = self.kids.start(name, argv)
        deadline = time.monotonic() + START_TIMEOUT
        found: dict[str, str] = {}
        while len(found) < n:
            if not child.alive():
                raise RuntimeError(f"the simulator exited:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start in {START_TIMEOUT} s")
            text = child.log.read_text(errors="replace")
            found = {m[1]: m[2] for m in LINE.finditer(text)}
            await asyncio.sleep(0.02)
        return child, found

    async def signal(self, name: str, how: str) -> str:
        """kill (SIGKILL) or term (SIGTERM, then wait for the drain to end) the replica's
        own process, and start it again on the same port; returns what happened."""
        child, argv = self._own[name]
        t0 = time.monotonic()
        child.send_signal(SIGNALS[how])
        deadline = t0 + DRAIN_TIMEOUT + 5.0
        while child.alive():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not exit {deadline - t0:.0f} s after SIG{how}")
            await asyncio.sleep(0.01)
        exited = time.monotonic() - t0
        self._starts += 1
        again, found = await self._spawn(f"{self.name}-{name}-{self._starts}", argv, 1)
        self._own[name] = (again, argv)
        if found["r0"] != self.replicas[name].url:
            raise RuntimeError(f"{name} came back at {found['r0']}, not its old address")
        await self.wait_loaded([name], START_TIMEOUT)
        return (f"exited {exited:.2f} s after SIG{how.upper()} (code {child.proc.returncode}), "
                f"serving again {time.monotonic() - t0:.2f} s after it")

    def get(self, name: str) -> Replica:
        return self.replicas[name]

    def of(self, defs: list[ReplicaDef]) -> list[Replica]:
        return [self.replicas[d.name] for d in defs]

    async def _get(self, url: str) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with self.session.get(url, timeout=timeout) as r:
            body = await r.read()
            return r.status, json.loads(body) if r.status == 200 and body else None

    async def wait_loaded(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            url = self.replicas[name].url + "/health"
            while True:
                try:
                    status, _ = await self._get(url)
                    if status == 200:
                        break
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {name} not healthy after {timeout} s")
                await asyncio.sleep(0.05)

    async def stats(self) -> dict[str, dict[str, Any]]:
        """GET /sim/stats of every replica (a replica that does not answer: {})."""

        async def one(r: Replica) -> dict[str, Any]:
            try:
                status, data = await self._get(r.url + "/sim/stats")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return {}
            return data if status == 200 and isinstance(data, dict) else {}

        reps = list(self.replicas.values())
        got = await asyncio.gather(*(one(r) for r in reps))
        return {r.name: g for r, g in zip(reps, got, strict=True)}

    async def restart(self, name: str) -> None:
        url = self.replicas[name].url + "/sim/restart"
        async with self.session.post(url, timeout=aiohttp.ClientTimeout(total=5.0)) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"restart of {name}: HTTP {r.status}")

    async def user_cold(self, names: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Per named replica, its user requests that paid a first-use cost, from its own
        request log (GET /sim/requests): start, path, model, prompt_tokens, features, cold
        (the reasons). A replica that does not answer: []."""

        async def one(name: str) -> list[dict[str, Any]]:
            try:
                status, data = await self._get(self.replicas[name].url + "/sim/requests")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return []
            recs = data.get("requests", []) if status == 200 and isinstance(data, dict) else []
            keep = ("start", "path", "model", "prompt_tokens", "features", "cold")
            return [{k: r.get(k) for k in keep} for r in recs
                    if not r.get("warmup") and r.get("cold")]

        got = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, got, strict=True))

    async def served_by(self) -> dict[str, tuple[str, int]]:
        """X-Request-Id -> (the name of the replica that served it, the most of its prompt
        another replica held in its prefix cache when it was scheduled, -1 if unknown), for
        every user request in the replicas' logs that carried one."""

        async def one(name: str) -> list[tuple[str, int]]:
            try:
                status, data = await self._get(self.replicas[name].url + "/sim/requests")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return []
            recs = data.get("requests", []) if status == 200 and isinstance(data, dict) else []
            return [(r["request_id"], int(r.get("fleet_cached_tokens", -1))) for r in recs
                    if not r.get("warmup") and r.get("request_id")]

        names = list(self.replicas)
        got = await asyncio.gather(*(one(n) for n in names))
        return {rid: (n, held) for n, recs in zip(names, got, strict=True)
                for rid, held in recs}

    # -- prewarm ------------------------------------------------------------------------

    async def prewarm(self, names: list[str], workload: Workload) -> int:
        """Warm these replicas directly with the workload's own requests (one of each
        prompt size, kind and feature mix, max_running at a time, so every batch size is
        reached), until a whole round paid no first-use cost on any of them and every
        batch bucket is warm, by the simulator's own accounting (/sim/stats). Returns the
        warmup requests sent (none when the fleet's first uses cost nothing). (The
        simulator's first-use costs do not depend on streaming, so the requests are not
        streamed.)"""
        if not any(getattr(self.fleet.sim, p) for p in PENALTIES):
            return 0  # no first use costs anything: nothing to warm
        bodies = [request_for(s, self.fleet.sim.model, workload.text)
                  for s in every_request(workload)]
        batches = set(self.fleet.sim.batch_buckets)
        todo, sent = list(names), 0
        before = await self.stats()
        for _ in range(PREWARM_ROUNDS):
            bursts = [self._burst(self.replicas[name].url, bodies) for name in todo]
            sent += sum(await asyncio.gather(*bursts))
            after = await self.stats()
            todo = [
                name for name in todo
                if after[name].get("warmup_cold_hits") != before[name].get("warmup_cold_hits")
                or not batches <= set(after[name].get("warm_batch_buckets", ()))
            ]
            if not todo:
                return sent
            before = after
        raise RuntimeError(f"prewarm: {todo} still paid first-use costs after "
                           f"{PREWARM_ROUNDS} rounds of the workload's requests")

    async def _burst(self, url: str, bodies: list[tuple[str, bytes]]) -> int:
        """Every body once, max_running at a time (so the batch reaches max_running)."""
        n = self.fleet.sim.max_running

        async def one(path: str, body: bytes) -> None:
            async with self.session.post(
                url + path, data=body,
                headers={WARMUP_HEADER: "1", "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=60.0),
            ) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"prewarm: {path} answered {r.status}: "
                                       f"{(await r.text())[:200]}")

        for i in range(0, len(bodies), n):
            chunk = bodies[i:i + n]
            chunk += bodies[:n - len(chunk)] if len(bodies) >= n else []
            await asyncio.gather(*(one(p, b) for p, b in chunk))
        return len(bodies)
