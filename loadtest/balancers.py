"""What sits between the clients and the simulated fleet: a balancer the runner can start,
change (add, remove, cutover), ask (is replica X routable? are the initial replicas at full
weight?) and stop. `Warmgw` runs the gateway (`python -m warmgw serve`) with one of its
strategies and drives it through the admin API; the peers are in loadtest.peer_balancers.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtest.procs import Child, Children, free_port
from loadtest.simfleet import Replica
from loadtest.spec import Scenario, merge
from warmgw.config import ConfigError
from warmgw.config import parse as parse_config

POLL = 0.1  # s between two looks at a balancer's state
START_TIMEOUT = 60.0


class BalancerError(RuntimeError):
    pass


class Unavailable(Exception):
    """This balancer cannot run here (not installed, or it failed to start): skip it."""


class Balancer(ABC):
    """One balancer of one run. Subclasses set .url and the process ids in start()."""

    name = "balancer"
    strategy = ""  # warmgw's strategy, or the peer's name

    def __init__(self, kids: Children, workdir: Path, scenario: Scenario,
                 session: aiohttp.ClientSession, replicas: Mapping[str, Replica]) -> None:
        self.kids = kids
        self.workdir = workdir
        self.s = scenario
        self.session = session
        self.all = dict(replicas)  # every replica of the fleet, by name
        self.url = ""
        self.logs: list[Path] = []

    @abstractmethod
    async def start(self, initial: list[Replica]) -> None: ...

    @abstractmethod
    async def routable(self, name: str) -> bool:
        """True once the balancer may send user requests to this replica."""

    @abstractmethod
    async def settled(self) -> bool:
        """True once every replica in rotation is at its full weight."""

    @abstractmethod
    async def add(self, reps: list[Replica]) -> str: ...

    @abstractmethod
    async def remove(self, names: list[str]) -> str: ...

    @abstractmethod
    async def cutover(self, frm: str, to: str, timeout: float) -> str: ...

    @abstractmethod
    def replica_of(self, headers: Mapping[str, str]) -> str:
        """Which replica answered, from the response headers."""

    async def observe(self) -> dict[str, Any]:
        """The balancer's view of each replica right now (for the record); {} if none."""
        return {}

    async def report(self) -> dict[str, Any]:
        """What the balancer counted itself over the run, read at the end; {} if nothing."""
        return {}

    async def wait_routable(self, names: list[str], timeout: float) -> float:
        """Until every named replica is routable; returns the seconds it took."""
        t0 = time.monotonic()
        pending = list(names)
        while pending:
            pending = [n for n in pending if not await self.routable(n)]
            if not pending:
                break
            if time.monotonic() - t0 > timeout:
                raise BalancerError(f"{self.name}: {pending} not routable after {timeout:g} s")
            await asyncio.sleep(POLL)
        return time.monotonic() - t0

    async def wait_settled(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not await self.settled():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL)
        return True


async def wait_http(session: aiohttp.ClientSession, url: str, timeout: float,
                    child: Child | None = None) -> None:
    """Until GET url answers 200; Unavailable (with the end of the child's log) if the
    child exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as r:
                await r.read()
                if r.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        if child is not None and not child.alive():
            raise Unavailable(f"{child.name} exited while starting: {last_words(child)}")
        if time.monotonic() > deadline:
            raise Unavailable(f"{url} not 200 after {timeout:g} s")
        await asyncio.sleep(0.05)


def last_words(child: Child) -> str:
    """The child's last log line that says something (an error, usually), shortened."""
    lines = [x for x in child.tail(40).splitlines() if x.strip()]
    for x in reversed(lines):
        if any(w in x.lower() for w in ("error", "alert", "critical", "fatal")):
            return x.strip()[:300]
    return lines[-1].strip()[:300] if lines else "(no output)"


class Warmgw(Balancer):
    """The gateway as a process, with strategy warm, slow_start or round_robin; or a
    scenario's variant (loadtest.prefix_spec): a name, one of those strategies and config
    merged over the scenario's gateway section."""

    def __init__(self, strategy: str, *args: Any) -> None:
        super().__init__(*args)
        self.name = strategy
        variant = self.s.variant(strategy)
        self.strategy = variant.strategy if variant is not None else strategy
        self.extra: dict[str, Any] = json.loads(variant.gateway_json) if variant else {}
        self.token = secrets.token_hex(16)
        self.admin = ""
        self.http = ""  # the gateway's HTTP listener (its /metrics); users' URL is .url
        self.pid = 0

    def config(self, initial: list[Replica]) -> dict[str, Any]:
        s = self.s
        port, admin_port = free_port(), free_port()
        self.url = self.http = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        base: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": port, "shutdown_timeout": 2},
            "admin": {"host": "127.0.0.1", "port": admin_port, "token": self.token},
            "strategy": self.strategy,
            "replicas": [{"name": r.name, "url": r.url, "pool": r.pool} for r in initial],
            "policy": {"active": s.fleet.active_pool},
            "health": {"interval": s.health.interval, "timeout": s.health.timeout},
            "slow_start": {"window": s.slow_start.window,
                           "aggression": s.slow_start.aggression,
                           "min_weight_percent": s.slow_start.min_weight_percent / 100.0},
        }
        return merge(merge(base, s.gateway), self.extra)

    async def start(self, initial: list[Replica]) -> None:
        cfg = self.config(initial)
        try:
            parse_config(cfg)
        except ConfigError as e:
            if self.extra and "unknown key" in str(e):
                # a variant that needs a gateway option this tree does not have
                raise Unavailable(f"option not available in this tree: {e}") from None
            raise BalancerError(f"{self.name}: gateway config: {e}") from None
        path = self.workdir / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        argv = [sys.executable, "-m", "warmgw", "--log-level", "info", "serve",
                "--config", str(path)]
        child = self.kids.start(f"gateway-{self.name}", argv, grace=5.0)
        self.pid = child.pid
        self.logs.append(child.log)
        await wait_http(self.session, self.http + "/healthz", START_TIMEOUT, child)

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None if body is None else json.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.request(
            method, self.admin + "/admin/v1" + path, data=data, headers=headers,
            timeout=aiohttp.ClientTimeout(total=5.0),
        ) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def status(self) -> dict[str, Any]:
        code, data = await self._call("GET", "/status")
        if code != 200 or not isinstance(data, dict):
            raise BalancerError(f"admin status: HTTP {code}: {str(data)[:200]}")
        return data

    async def _replicas(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in (await self.status())["replicas"]}

    async def routable(self, name: str) -> bool:
        r = (await self._replicas()).get(name)
        return r is not None and r["state"] in ("ramping", "ready") and r["weight"] > 0

    async def settled(self) -> bool:
        pool = self.s.fleet.active_pool
        mine = [r for r in (await self._replicas()).values()
                if r["pool"] == pool and r["state"] not in ("draining", "gone")]
        return bool(mine) and all(r["state"] == "ready" for r in mine)

    async def add(self, reps: list[Replica]) -> str:
        for r in reps:
            code, data = await self._call("POST", "/replicas",
                                          {"name": r.name, "url": r.url, "pool": r.pool})
            if code != 201:
                raise BalancerError(f"add {r.name}: HTTP {code}: {str(data)[:200]}")
        return "admin API: POST /admin/v1/replicas"

    async def remove(self, names: list[str]) -> str:
        for n in names:
            code, data = await self._call("DELETE", f"/replicas/{n}")
            if code != 200:
                raise BalancerError(f"remove {n}: HTTP {code}: {str(data)[:200]}")
        return "admin API: DELETE /admin/v1/replicas/NAME (drains)"

    async def cutover(self, frm: str, to: str, timeout: float) -> str:
        """POST /admin/v1/cutover; a 409 (green not warm yet) is retried until timeout."""
        t0 = time.monotonic()
        refused = 0
        last = ""
        while True:
            code, data = await self._call("POST", "/cutover", {"to": to, "from": frm})
            if code == 200:
                waited = time.monotonic() - t0
                return (f"admin API cutover accepted after {waited:.1f} s"
                        + (f" ({refused} refusal(s) with 409: {last})" if refused else ""))
            if code != 409:
                raise BalancerError(f"cutover: HTTP {code}: {str(data)[:300]}")
            refused += 1
            last = str(data.get("error", {}).get("message", data) if isinstance(data, dict)
                       else data)[:160]
            if time.monotonic() - t0 > timeout:
                raise BalancerError(f"cutover refused for {timeout:g} s: {last}")
            await asyncio.sleep(0.25)

    def replica_of(self, headers: Mapping[str, str]) -> str:
        return headers.get("X-Warmgw-Replica", "")

    async def observe(self) -> dict[str, Any]:
        try:
            reps = await self._replicas()
        except (aiohttp.ClientError, TimeoutError, BalancerError):
            return {}
        return {n: {"state": r["state"], "weight": r["weight"]} for n, r in reps.items()}

    async def report(self) -> dict[str, Any]:
        """From the gateway's /metrics: the cold hits it counted ("replica/reason" -> n),
        the learned profile's size, warmup coverage and refused warmup requests."""
        try:
            async with self.session.get(self.http + "/metrics",
                                        timeout=aiohttp.ClientTimeout(total=5.0)) as r:
                text = await r.text() if r.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError):
            return {}
        return gateway_counts(text)


GATEWAY_GAUGES = {"warmgw_warmup_coverage_ratio": "coverage",
                  "warmgw_profile_shapes": "profile_shapes",
                  "warmgw_warmup_refused_total": "warmup_refused"}


def gateway_counts(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cold_hits": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "warmgw_cold_hits_total":
                key = f"{sample.labels.get('replica')}/{sample.labels.get('reason')}"
                out["cold_hits"][key] = int(sample.value)
            elif sample.name in GATEWAY_GAUGES:
                out[GATEWAY_GAUGES[sample.name]] = round(sample.value, 4)
    return out
